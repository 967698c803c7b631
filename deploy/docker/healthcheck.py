#!/usr/bin/env python3
"""Container health check: GET /healthz on the local service; exit 0 when it answers 200.

Python instead of curl so that the runtime image carries no extra network tools.
"""

import os
import sys
import urllib.request

PORT = os.environ.get("DOMAIN_LM_PORT", "8000")
PATH = sys.argv[1] if len(sys.argv) > 1 else "/healthz"

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{PATH}", timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as e:  # any failure is "unhealthy"; the reason goes to `docker inspect`
    print(f"unhealthy: {e}", file=sys.stderr)
    sys.exit(1)
