#!/usr/bin/env python3
"""Container health check without curl: `genedge-healthcheck [URL]`.

Exits 0 when URL (default http://127.0.0.1:8000/healthz) answers 2xx within the timeout
(GENEDGE_HEALTHCHECK_TIMEOUT_S, default 4 s), else 1 with the reason on stderr.
Standard library only, so the slim images need nothing more. Proxies are ignored on
purpose: a container's HTTP_PROXY must not capture a loopback probe.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:8000/healthz"
    timeout = float(os.environ.get("GENEDGE_HEALTHCHECK_TIMEOUT_S", "4"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            ok = 200 <= resp.status < 300
    except Exception as exc:  # any failure means unhealthy; say why
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
