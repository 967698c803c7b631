"""Fuzz the service's OpenAPI schema with schemathesis: at least 5,000 generated requests, 0 server errors.

    python bench/fuzz_bench.py [--requests 5000] [--examples 10] [--seed 0]

The real app (FakeEngine behind it, so the HTTP layer is what is tested) runs on uvicorn; schemathesis
sends examples, boundary cases, random valid and invalid data and stateful sequences for every
operation, once with an admin key and once with a key scoped to one task, until ``--requests`` were
sent. Prints requests sent, server errors (5xx or dropped connections), the status mix, and the p99
latency of /healthz polled during the fuzz. Exit code 1 if any server error was found.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.security.fuzzing import fuzz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="Keep fuzzing until at least this many requests were sent.")
    ap.add_argument("--examples", type=int, default=10, help="schemathesis --max-examples per operation and run.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    report = fuzz(args.requests, seed=args.seed, examples=args.examples)
    print(f"requests sent:        {report.sent}")
    print(f"server errors:        {len(report.server_errors)}")
    for line in report.server_errors[:20]:
        print(f"  {line}")
    print(f"status mix:           {dict(sorted(report.statuses.items()))}")
    print(
        f"/healthz during fuzz: p99 {report.healthz_p99_ms:.1f} ms over {len(report.healthz_ms)} probes "
        f"(max {max(report.healthz_ms, default=0):.1f} ms)"
    )
    print(f"wall time:            {report.seconds:.0f} s")
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
