"""The master's HTTP endpoint (/metrics, /healthz, /readyz, /status, and the console).

It is served from the master's own loop rather than a thread: the master
forks, and a process that forks should not have threads. So no client may
ever hold that loop, not even for a moment: every socket is non-blocking, the
loop waits on all of them with the rest, each read or write takes only what
is ready, and a client whose request and answer are not through within
CLIENT_TIMEOUT, however slowly it trickles, is dropped. Many slow clients at
once cost a few sockets (at most MAX_CLIENTS: a new client takes the place of
the oldest), never the master's time.
http.server parses and answers a request once it has fully arrived (its
head, and for a POST its body of at most BODY_LIMIT bytes).
"""

import functools
import http.server
import io
import logging
import selectors
import socket
import time
import urllib.parse

from wqd.config.checks import parse_listen

log = logging.getLogger("wqd.master")

# A client whose request has not arrived, and been answered, after this long
# is dropped, so a slow or stuck client costs a socket for this long at most.
CLIENT_TIMEOUT = 2.0
# Reading stops past this many bytes; the parser then rejects what is too long
# (it allows a 64 KiB request line, 100 header lines).
HEAD_LIMIT = 128 * 1024
# A POST's body (the console's forms) is read up to this many bytes; a longer one is refused.
BODY_LIMIT = 64 * 1024
# Clients served at once; a new one beyond them takes the place of the oldest.
MAX_CLIENTS = 64
LISTEN_BACKLOG = 64



class Request:
    """What a route given the request (``app``) sees of it."""

    def __init__(self, method: str, target: str, headers, body: bytes):
        self.method = method
        self.path, _, query = target.partition("?")
        self.query = urllib.parse.parse_qs(query)
        self.headers = headers  # an email.message.Message: case-insensitive get()
        self.body = body

    def form(self) -> dict:
        """The body as an application/x-www-form-urlencoded form: name -> [values]."""
        return urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))


class HTTPEndpoint:
    def __init__(self, listen: str, routes: dict, app=None):
        """``routes`` maps a path to a function returning (status, content_type,
        body). ``app`` (the console) answers GET and POST on every other path:
        ``app.handle(Request)`` returns (status, content_type, body, {header:
        value}); the endpoint also passes on the loop's turns to it: the
        pipes it waits on (``app.watched()``: (fd, callback) pairs), a tick
        (``app.tick(now)``) and ``app.close()``."""
        self._app = app
        self._handler_class = type("Handler", (_Handler,), {"routes": routes,
                                                            "app": staticmethod(app.handle) if app else None})
        host, port = parse_listen(listen)
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(LISTEN_BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._clients = {}  # socket -> _Client

    def watched(self):
        """(fd, selector events, callback) for each socket the loop must wait on."""
        yield self._listener.fileno(), selectors.EVENT_READ, self._accept
        for client in self._clients.values():
            yield client.conn.fileno(), client.events, functools.partial(self._serve, client)
        for fd, callback in self._app.watched() if self._app else ():
            yield fd, selectors.EVENT_READ, callback

    def tick(self, now: float) -> None:
        """The loop's turn: drop late clients, and let the app do its own."""
        self.drop_late_clients(now)
        if self._app:
            self._app.tick(now)

    def drop_late_clients(self, now: float) -> None:
        for client in [client for client in self._clients.values() if now > client.deadline]:
            log.debug("HTTP client %s dropped: its request did not arrive and get its answer within %s s.",
                      client.address, CLIENT_TIMEOUT)
            self._drop(client)

    def close(self) -> None:
        """In the master at its exit, and in every child it forks."""
        for client in list(self._clients.values()):
            self._drop(client)
        self._listener.close()
        if self._app:
            self._app.close()

    def _accept(self) -> None:
        for _ in range(LISTEN_BACKLOG):  # what waits now; later arrivals wake the loop again
            try:
                conn, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: try again at the next wake
                log.warning("HTTP endpoint: cannot accept a connection: %s", exc)
                return
            if len(self._clients) >= MAX_CLIENTS:  # room for the newest: the oldest is the slowest
                self._drop(next(iter(self._clients.values())))
            conn.setblocking(False)
            self._clients[conn] = _Client(conn, address, time.monotonic() + CLIENT_TIMEOUT)

    def _serve(self, client: "_Client") -> None:
        if client.conn not in self._clients:
            return  # dropped earlier in the same wake, to make room for a newer client
        try:
            done = client.advance(self._handler_class)
        except OSError as exc:  # the client went away
            log.debug("HTTP client %s dropped: %s", client.address, exc)
            done = True
        except Exception:  # a bug in a route: that request fails, the master goes on
            log.exception("HTTP request from %s failed.", client.address)
            done = True
        if done:
            self._drop(client)

    def _drop(self, client: "_Client") -> None:
        del self._clients[client.conn]
        client.conn.close()


class _Client:
    """One connection: its request as it arrives, then its answer as it leaves."""

    def __init__(self, conn: socket.socket, address, deadline: float):
        self.conn = conn
        self.address = address
        self.deadline = deadline
        self.head = b""
        self.answer = None  # what is left to send, once the request is in

    @property
    def events(self) -> int:
        return selectors.EVENT_READ if self.answer is None else selectors.EVENT_WRITE

    def advance(self, handler_class) -> bool:
        """Take what is ready to read, or send what the socket takes; True when done."""
        if self.answer is None:
            try:
                chunk = self.conn.recv(65536)
            except BlockingIOError:
                return False
            self.head += chunk
            if chunk and not _arrived(self.head) and len(self.head) <= HEAD_LIMIT + BODY_LIMIT:
                return False
            # The whole head (or the client's end of sending): parse and answer it.
            self.answer = memoryview(handler_class(self.head, self.address, None).wfile.getvalue())
        try:
            sent = self.conn.send(self.answer)
        except BlockingIOError:
            return False
        self.answer = self.answer[sent:]
        return not self.answer


def _arrived(data: bytes) -> bool:
    """The request's head, and the body its Content-Length announces (if not past BODY_LIMIT), are in."""
    ends = [(index, len(mark)) for mark in (b"\r\n\r\n", b"\n\n") for index in [data.find(mark)] if index >= 0]
    if not ends:
        return False
    index, size = min(ends)
    head = data[:index].lower()
    found = head.find(b"\ncontent-length:")
    if found < 0:
        return True
    value = head[found + len(b"\ncontent-length:"):].split(b"\n", 1)[0].strip()
    wanted = int(value) if value.isdigit() else 0
    return wanted > BODY_LIMIT or len(data) - index - size >= wanted  # too long: refused at once


class _Handler(http.server.BaseHTTPRequestHandler):
    """Parses the request head it is given and writes its answer to a buffer."""

    routes: dict = {}
    app = None
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request)  # the request head, already read
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        pass  # the buffers stay readable: the answer is sent from wfile

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is not None:
            self._answer(*route())
        elif self.app is not None:
            self._answer(*self.app(Request("GET", self.path, self.headers, b"")))
        else:
            self._answer(404, "text/plain", b"not found\n")

    def do_POST(self) -> None:
        if self.app is None or self.path.split("?", 1)[0] in self.routes:
            self._answer(405, "text/plain", b"method not allowed\n", {"Allow": "GET"})
            return
        length = self.headers.get("Content-Length", "0").strip()
        if not length.isdigit() or int(length) > BODY_LIMIT:
            self._answer(413, "text/plain", f"a body of at most {BODY_LIMIT} bytes, with its Content-Length, "
                                            f"is expected\n".encode())
            return
        body = self.rfile.read(int(length))
        self._answer(*self.app(Request("POST", self.path, self.headers, body)))

    def _answer(self, status: int, content_type: str, body: bytes, headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        log.debug("HTTP %s", format % args)
