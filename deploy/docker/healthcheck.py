"""Container HEALTHCHECK: GET /healthz on the service's own port; exit 0 only on HTTP 200."""

import os
import sys
import urllib.request

port = os.environ.get("LOYALTY_HTTP_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure means unhealthy; say why in `docker inspect`
    print(f"healthz failed: {exc}", file=sys.stderr)
    sys.exit(1)
