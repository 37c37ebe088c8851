"""The master's HTTP endpoint in-process, pumped as the master's loop does:
answers, errors from the parser, and a route that fails, none of which may
raise out of the loop."""

import selectors
import socket
import threading
import time

from wqd.master.http_endpoint import HEAD_LIMIT, HTTPEndpoint


def serve_until(endpoint: HTTPEndpoint, done: threading.Event, seconds: float = 10) -> None:
    """The master's wait and dispatch, until ``done`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not done.is_set() and time.monotonic() < deadline:
        endpoint.drop_late_clients(time.monotonic())
        with selectors.DefaultSelector() as selector:
            for fd, events, callback in endpoint.watched():
                selector.register(fd, events, callback)
            for key, _ in selector.select(0.05):
                key.data()


def exchange(endpoint: HTTPEndpoint, request: bytes) -> bytes:
    """Send ``request`` (in small pieces) and return the whole answer."""
    answer, done = [], threading.Event()

    def client():
        with socket.create_connection(("127.0.0.1", int(endpoint.address.rsplit(":", 1)[1])), timeout=10) as conn:
            for start in range(0, len(request), 7000):
                conn.sendall(request[start:start + 7000])
            while chunk := conn.recv(65536):
                answer.append(chunk)
        done.set()

    thread = threading.Thread(target=client)
    thread.start()
    serve_until(endpoint, done)
    thread.join()
    return b"".join(answer)


def fails():
    raise RuntimeError("a bug in a route")


def endpoint() -> HTTPEndpoint:
    return HTTPEndpoint("127.0.0.1:0", {"/healthz": lambda: (200, "text/plain", b"ok\n"), "/broken": fails})


def test_a_route_answers():
    server = endpoint()
    try:
        answer = exchange(server, b"GET /healthz?verbose HTTP/1.0\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n")
        assert exchange(server, b"GET /nothing HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    finally:
        server.close()


def test_requests_the_parser_refuses_get_its_error_and_the_loop_goes_on():
    server = endpoint()
    try:
        assert exchange(server, b"GET /" + b"a" * HEAD_LIMIT + b" HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 414 ")
        assert exchange(server, b"BREW /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 501 ")
        # A request line the parser cannot read gets an HTTP/0.9 answer: the error page alone.
        assert b"Error code: 400" in exchange(server, b"nonsense\r\n\r\n")
        assert exchange(server, b"GET /broken HTTP/1.0\r\n\r\n") == b"", "a failing route: the connection is closed"
        assert exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"ok\n")
    finally:
        server.close()


class App:
    """What the console is to the endpoint: it answers the other paths, and has turns of its own."""

    def __init__(self):
        self.seen, self.ticks, self.closed = [], [], False

    def handle(self, request):
        self.seen.append((request.method, request.path, request.query, request.form(), request.headers.get("Origin")))
        return 303, "text/plain", b"moved\n", {"Location": "/there"}

    def watched(self):
        return ()

    def tick(self, now):
        self.ticks.append(now)

    def close(self):
        self.closed = True


def test_an_app_answers_posts_with_their_body_and_its_headers():
    app = App()
    server = HTTPEndpoint("127.0.0.1:0", {"/healthz": lambda: (200, "text/plain", b"ok\n")}, app=app)
    try:
        body = b"a=1&b=" + b"x" * 20000  # arrives in several pieces (exchange sends 7000 bytes at a time)
        head = f"POST /act?n=2 HTTP/1.0\r\nOrigin: http://here\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        answer = exchange(server, head + body)
        assert answer.startswith(b"HTTP/1.0 303 ") and b"\r\nLocation: /there\r\n" in answer
        assert app.seen == [("POST", "/act", {"n": ["2"]}, {"a": ["1"], "b": ["x" * 20000]}, "http://here")]
        assert exchange(server, b"POST /healthz HTTP/1.0\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
        too_long = b"POST /act HTTP/1.0\r\nContent-Length: 999999\r\n\r\nabc"
        assert exchange(server, too_long).startswith(b"HTTP/1.0 413 ")
        assert exchange(server, b"GET /page HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 303 ")
        server.tick(12.5)
        assert app.ticks == [12.5]
    finally:
        server.close()
    assert app.closed
