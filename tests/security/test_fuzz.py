"""Finding 8 and the acceptance fuzz: a bounded schemathesis run finds no server error.

Both keys (admin, task-scoped) fuzz every operation of the app's OpenAPI schema. The full run
(>= 5,000 requests) is ``bench/fuzz_bench.py``; this one sends a few hundred.
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis")

from .fuzzing import fuzz  # noqa: E402


def test_fuzzing_the_openapi_schema_finds_no_server_error():
    report = fuzz(total_requests=300, seed=1, examples=3)
    assert report.sent >= 300, report.statuses
    assert report.server_errors == [], report.server_errors[:10]
    assert report.statuses[200] > 20 and report.statuses[422] > 0, report.statuses  # real answers, not only refusals
    assert report.healthz_ms and report.healthz_p99_ms < 250, f"p99 /healthz {report.healthz_p99_ms:.1f} ms"
    assert report.seconds < 120, f"{report.seconds:.0f} s"
