"""The master's HTTP endpoint (/metrics, /healthz, /readyz, /status).

It is served from the master's own select loop rather than a thread: the
master forks, and a process that forks should not have threads. So a client
must never hold that loop for long: its whole request has to arrive within
CLIENT_TIMEOUT, however slowly it trickles in, or the connection is dropped.
"""

import http.server
import logging
import time

log = logging.getLogger("wqd.master")

# A request that has not fully arrived after this long is dropped, so a slow
# or stuck client cannot stall the master (its reaping, respawns and signals).
CLIENT_TIMEOUT = 2.0


def parse_listen(listen: str):
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HTTPEndpoint:
    def __init__(self, listen: str, routes: dict):
        """``routes`` maps a path to a function returning (status, content_type, body)."""
        handler = type("Handler", (_Handler,), {"routes": routes})
        host, port = parse_listen(listen)
        server_class = _IPv6Server if ":" in host else http.server.HTTPServer
        self.server = server_class((host, port), handler)
        self.address = f"{host}:{self.server.server_address[1]}"

    def fileno(self) -> int:
        return self.server.fileno()

    def handle_one(self) -> None:
        """Called when the listening socket is readable."""
        self.server._handle_request_noblock()

    def close(self) -> None:
        self.server.server_close()


class _IPv6Server(http.server.HTTPServer):
    import socket as _socket
    address_family = _socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # requests are read through the deadline instead
        self.rfile = _DeadlineReader(self.connection, time.monotonic() + CLIENT_TIMEOUT)

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


class _DeadlineReader:
    """The handler's rfile: lines of a request that must arrive whole before a
    deadline. A socket timeout alone restarts at every byte; this one does not.
    Raises TimeoutError, on which the handler drops the connection."""

    def __init__(self, connection, deadline: float):
        self._connection = connection
        self._deadline = deadline
        self._buffer = b""

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self._buffer and (limit < 0 or len(self._buffer) < limit):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the request did not arrive within {CLIENT_TIMEOUT} s")
            self._connection.settimeout(remaining)
            chunk = self._connection.recv(4096)
            if not chunk:
                break
            self._buffer += chunk
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if limit >= 0:
            end = min(end, limit)
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def close(self) -> None:
        """Nothing to release: the handler closes the connection itself."""
