"""Health probe: GET a URL (default: this container's /healthz) and exit 0 only on HTTP 200.

Used by the image's HEALTHCHECK (no argument) and by the chart's `helm test` pods, which pass a service's
/readyz URL.
"""

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('LOYALTY_HTTP_PORT', '8080')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except Exception as exc:  # any failure means unhealthy; say why (docker inspect / helm test logs)
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: HTTP {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
