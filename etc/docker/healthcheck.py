"""The image's HEALTHCHECK: GET /healthz where wqd's configuration says it listens.

The address comes from the config `wqd run` reads ($WQD_CONFIG, else
/etc/wqd/wqd.yaml), not a fixed 127.0.0.1:9808: on the host's network
(docker run --network host) a container must listen on a port of its own, and
on 127.0.0.1 only. Exit 0 when /healthz answers 200, else 1 (Docker's rule).
"""

import sys
import urllib.request

from wqd import config

# Where to ask a server that listens on every address.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def main() -> int:
    listen = config.load(config.default_path()).metrics.listen
    if listen is None:
        print("wqd healthcheck: metrics.listen is null, so there is no /healthz to ask", file=sys.stderr)
        return 1
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = WILDCARDS.get(host, host)
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"wqd healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
