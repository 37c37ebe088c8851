"""The master's HTTP endpoint (/metrics, /healthz, /readyz, /status).

It is served from the master's own loop rather than a thread: the
master forks, and a process that forks should not have threads. So a client
must never hold that loop for long: its whole request has to arrive within
CLIENT_TIMEOUT, however slowly it trickles in, or the connection is dropped.
"""

import http.server
import io
import logging
import socket
import time

log = logging.getLogger("wqd.master")

# A request that has not fully arrived after this long is dropped, so a slow
# or stuck client cannot stall the master (its reaping, respawns and signals).
CLIENT_TIMEOUT = 2.0
# Reading stops past this many bytes; the parser then rejects what is too long
# (it allows a 64 KiB request line, 100 header lines).
HEAD_LIMIT = 128 * 1024


def parse_listen(listen: str):
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HTTPEndpoint:
    def __init__(self, listen: str, routes: dict):
        """``routes`` maps a path to a function returning (status, content_type, body)."""
        handler = type("Handler", (_Handler,), {"routes": routes})
        host, port = parse_listen(listen)
        server_class = _IPv6Server if ":" in host else _Server
        self.server = server_class((host, port), handler)
        self.address = f"{host}:{self.server.server_address[1]}"

    def fileno(self) -> int:
        return self.server.fileno()

    def handle_one(self) -> None:
        """Called when the listening socket is readable."""
        self.server.handle_request()

    def close(self) -> None:
        self.server.server_close()


class _Server(http.server.HTTPServer):
    # handle_request() is only called when a client is waiting: never wait for one.
    timeout = 0


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    protocol_version = "HTTP/1.0"

    def handle(self) -> None:
        """Read the whole request head within the deadline, then parse it as usual."""
        try:
            head = _read_head(self.request, time.monotonic() + CLIENT_TIMEOUT)
        except OSError as exc:  # TimeoutError included
            self.log_error("Request dropped: %s", exc)
            return
        self.rfile.close()
        self.rfile = io.BytesIO(head)
        super().handle()

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, content_type, body = 404, "text/plain", b"not found\n"
        else:
            status, content_type, body = route()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        log.debug("HTTP %s", format % args)


def _read_head(connection, deadline: float) -> bytes:
    """The request line and headers, up to the blank line that ends them (or
    the client's end of sending). They must arrive whole before ``deadline``:
    a socket timeout alone restarts at every byte; this one does not."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) <= HEAD_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the request did not arrive within {CLIENT_TIMEOUT} s")
        connection.settimeout(remaining)
        chunk = connection.recv(4096)
        if not chunk:
            break
        head += chunk
    return head
