"""The master's HTTP endpoint (/metrics, /healthz, /readyz, /status).

It is served from the master's own select loop rather than a thread: the
master forks, and a process that forks should not have threads.
"""

import http.server
import logging

log = logging.getLogger("wqd.master")

# A client that sends nothing for this long is dropped, so it cannot stall the master.
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
