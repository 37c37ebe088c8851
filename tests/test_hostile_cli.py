"""Hostile input at the command line: whatever an operator, a careless user or
the network hands `wqd check`, `run`, `publish` and `status` ends in one
paragraph and its documented exit code (78 configuration, 69 broker, 65
input), within a bounded time and memory, with no traceback and no password."""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.support.broker import BrokerNode
from tests.support.daemon import WQD, pool, run_cli, url_option, wqd_env
from tests.support.waiting import wait_for
from wqd.broker import amqp

EX_DATAERR, EX_UNAVAILABLE, EX_CONFIG = 65, 69, 78
# Passwords holding every character that ends a URL's user info early; each
# ends with a marker no message would contain by chance. (Only a password
# holding ",amqp://" cannot be told from two URLs in $WQD_BROKER_URL.)
PASSWORDS = ["pa/ss-S3CR", "p@ss#w?rd:S3CR", "with,comma,S3CR", "sp ace/@#?:,S3CR"]


def _write(tmp_path, url="amqp://guest:guest@127.0.0.1:5672/%2F", queue="q", handler="handlers:task",
           **sections):
    document = {"broker": {"url": url}, "metrics": {"listen": None},
                "pools": [{"name": "default", "queue": queue, "handler": handler}]}
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    path = tmp_path / "wqd.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _one_paragraph(result, code, *secrets):
    """The command failed with ``code``, saying so on stderr without a traceback or a secret."""
    output = result.stdout + result.stderr
    assert result.returncode == code, result
    assert result.stderr.startswith("wqd"), result.stderr
    assert "Traceback" not in output and "\n\n" not in result.stderr.strip(), result.stderr
    for secret in secrets:
        assert secret not in output and "S3CR" not in output, output
    return result.stderr


# -- 1. passwords, whatever they hold --


@pytest.mark.parametrize("password", PASSWORDS)
def test_check_and_errors_never_show_a_password(tmp_path, password):
    url = f"amqp://guest:{password}@127.0.0.1:5672/%2F"
    env = wqd_env(tmp_path / "r")
    result = run_cli("check", "-c", str(_write(tmp_path, url)), env=env)
    assert result.returncode == 0, result.stderr
    assert "broker amqp://guest:***@127.0.0.1:5672/%2F;" in result.stdout
    assert "S3CR" not in result.stdout + result.stderr
    # Every error quoting the URL, the list form and $WQD_BROKER_URL included.
    for bad in (url.replace(":5672", ":99999"), [url, url.replace("amqp://", "ftp://")]):
        _one_paragraph(run_cli("check", "-c", str(_write(tmp_path, bad)), env=env), EX_CONFIG, password)
    env["WQD_BROKER_URL"] = f"{url},{url.replace(':5672', ':0')}"
    _one_paragraph(run_cli("check", "-c", str(_write(tmp_path)), env=env), EX_CONFIG, password)
    for command in ("status", "publish"):
        _one_paragraph(run_cli(command, "-c", str(_write(tmp_path)), env=env), EX_CONFIG, password)


def test_a_password_with_any_characters_connects_and_is_never_shown(broker, queue_name, make_wqd, tmp_path):
    """Raw "/", "@", "#", "?", ":" and "," in a password: wqd connects with it
    (a URL list in $WQD_BROKER_URL is split only where a new URL starts), and
    neither a refusal nor the daemon's logs show it."""
    user, password = f"odd-{queue_name[-8:]}", "a/b@c#d?e:f,g S3CR"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        url = broker.url.replace("guest:guest", f"{user}:{password}")
        env = wqd_env(tmp_path / "r")
        config = _write(tmp_path, url, queue=queue_name)
        result = run_cli("publish", "-c", str(config), "one", env=env)
        assert result.returncode == 0, result.stderr
        env["WQD_BROKER_URL"] = f"{url},{url}"
        result = run_cli("publish", "-c", str(config), "two", env=env)
        assert result.returncode == 0, result.stderr
        del env["WQD_BROKER_URL"]
        without_password, password_env = url_option(url)
        result = run_cli("publish", "--url", f"{without_password},{without_password}", "--queue", queue_name,
                         "three", env={**env, **password_env})
        assert result.returncode == 0, result.stderr
        assert broker.get_all(queue_name) == [b"one", b"two", b"three"]
        wrong = url.replace("a/b@c", "A/B@C")
        result = run_cli("publish", "-c", str(_write(tmp_path, wrong, queue=queue_name)), "x", env=env)
        assert "refused the credentials" in _one_paragraph(result, EX_UNAVAILABLE, "a/b@c", "A/B@C")
        wqd = make_wqd([pool(queue_name, workers=1)], broker_url=wrong).start(wait_ready=False)
        wait_for(lambda: "refused the credentials" in wqd.logs(), 60, message=wqd.logs)
        assert "A/B@C" not in wqd.logs() and "S3CR" not in wqd.logs()
    finally:
        broker.ctl("delete_user", user)


# -- 2. one paragraph and the documented code for what cannot be used --


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path, command):
    path = tmp_path / "wqd.yaml"
    path.write_bytes(b"pools:\n  - name: caf\xe9\n")
    error = _one_paragraph(run_cli(command, "-c", str(path), env=wqd_env(tmp_path / "r")), EX_CONFIG)
    assert f"{path}:2: the configuration file is not UTF-8 text (byte 0xe9 at offset 20)" in error


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("url, problem", [
    ("amqp://guest:S3CRet@127.0.0.1:99999/%2F", "the port must be a number from 1 to 65535"),
    ("amqp://guest:S3CRet@127.0.0.1:56x2/%2F", "the port must be a number from 1 to 65535"),
    ("amqp://guest:S3CRet@127.0.0.1:5672/%2F?heartbeat=soon", "not a URL pika can use: Invalid heartbeat value 'soon'"),
    ("amqp://guest:S3CRet@127.0.0.1:5672/%2F?colour=red", "not a URL pika can use: Unknown URL parameter: 'colour'"),
    ("amqp://guest:S3CRet@[::1/%2F", "not a valid URL"),
])
def test_a_broker_url_that_cannot_be_used_is_a_configuration_error(tmp_path, command, url, problem):
    error = _one_paragraph(run_cli(command, "-c", str(_write(tmp_path, url)), env=wqd_env(tmp_path / "r")),
                           EX_CONFIG, "S3CRet")
    assert "broker.url: " + problem in error


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("listen, problem", [
    ("127.0.0.1:99999", "expected a port from 0 to 65535"),
    # A label over 63 characters cannot resolve, and fails before any DNS query (tests stay on loopback).
    ("a" * 64 + ".example:9808", "cannot resolve host '" + "a" * 64 + ".example'"),
])
def test_a_metrics_listen_that_cannot_be_bound_fails_check_too(tmp_path, command, listen, problem):
    config = _write(tmp_path, metrics={"listen": listen})
    error = _one_paragraph(run_cli(command, "-c", str(config), env=wqd_env(tmp_path / "r")), EX_CONFIG)
    assert f"metrics.listen: {problem}" in error


def test_a_stdin_line_that_is_not_utf8_stops_publish_there(broker, queue_name, tmp_path):
    """Lines before it are sent (and confirmed), it and the lines after it are not: exit 65."""
    url, password = url_option(broker.url)
    result = subprocess.run([WQD, "publish", "--url", url, "--queue", queue_name], input=b"one\ntwo\nth\xffree\nfour\n",
                            capture_output=True, env=wqd_env(tmp_path / "r", password))
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    error = _one_paragraph(result, EX_DATAERR)
    assert result.stdout.splitlines() == [" [x] Sent 'one'", " [x] Sent 'two'"]
    assert error == ("wqd publish: stdin line 3 is not UTF-8 text (byte 0xff at byte 3); "
                     "it was not sent, nor anything after it\n")
    assert broker.get_all(queue_name) == [b"one", b"two"]


def test_a_message_above_the_brokers_default_limit_is_refused_before_it_is_sent(broker, queue_name, tmp_path):
    """RabbitMQ 3.x takes at most 128 MiB (4.x: 16 MiB): wqd reads no more than
    that of a line and sends nothing of it."""
    major = int(broker.ctl("version").strip().split(".")[0])
    limit = (16 if major >= 4 else 128) * 1024 * 1024
    lines = b"first\n" + b"x" * (limit + 1) + b"\nlast\n"
    url, password = url_option(broker.url)
    result = subprocess.run([WQD, "publish", "--url", url, "--queue", queue_name], input=lines,
                            capture_output=True, env=wqd_env(tmp_path / "r", password), timeout=120)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    error = _one_paragraph(result, EX_DATAERR)
    assert f"stdin line 2 is larger than the broker takes: RabbitMQ {major}." in error
    assert f"default max_message_size ({limit // 1024 // 1024} MiB) is {limit} bytes; " \
           f"it was not sent, nor anything after it" in error
    assert broker.get_all(queue_name) == [b"first"]


@pytest.fixture(scope="module")
def small_message_broker(tmp_path_factory):
    """A node configured to take messages of at most 1 MiB."""
    node = BrokerNode(tmp_path_factory.mktemp("small-messages"), extra_conf="max_message_size = 1048576")
    node.start()
    yield node
    node.stop()


def test_a_message_above_a_configured_limit_is_named_with_that_limit(small_message_broker, tmp_path):
    """The broker does not announce a lower max_message_size; its refusal names it."""
    node = small_message_broker
    bodies = ["small", "x" * (2 * 1024 * 1024), "after"]
    url, password = url_option(node.url)
    result = run_cli("publish", "--url", url, "--queue", "limited", "-",
                     input="\n".join(bodies) + "\n", env=wqd_env(tmp_path / "r", password))
    error = _one_paragraph(result, EX_DATAERR)
    assert result.stdout.splitlines() == [" [x] Sent 'small'"]
    assert error == ("wqd publish: the broker refused message 2 (2097152 bytes, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxx'...): it takes at most 1048576 bytes (its max_message_size); "
                     "it was not sent, nor anything after it\n")
    assert node.get_all("limited") == [b"small"]


class ResettingProxy:
    """Forwards loopback TCP to a broker and resets the client's connection
    (RST) once it has sent ``after`` bytes: a connection reset mid-publish."""

    def __init__(self, port: int, after: int):
        self.port, self.after = port, after
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        client, _ = self.server.accept()
        upstream = socket.create_connection(("127.0.0.1", self.port))
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        sent = 0
        while sent < self.after:
            data = client.recv(65536)
            if not data:
                break
            upstream.sendall(data)
            sent += len(data)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass


def test_a_connection_reset_while_publishing_is_one_paragraph(broker, queue_name, tmp_path):
    proxy = ResettingProxy(broker.port, after=256 * 1024)
    url, password = url_option(f"amqp://guest:guest@127.0.0.1:{proxy.address[1]}/%2F")
    result = run_cli("publish", "--url", url, "--queue", queue_name, "-", input="x" * (1024 * 1024) + "\n",
                     env=wqd_env(tmp_path / "r", password))
    error = _one_paragraph(result, EX_UNAVAILABLE)
    assert error.startswith("wqd publish: while sending message 1 (1048576 bytes, 'xxx"), error
    assert f"at amqp://guest:***@127.0.0.1:{proxy.address[1]}/%2F" in error


# -- 3. numbers must be finite --


@pytest.mark.parametrize("section, values", [
    ("pools", {"time_limit": ".nan"}),
    ("pools", {"retry_delay": {"max": ".inf"}}),
    ("shutdown", {"graceful_timeout": "-.inf"}),
    ("broker", {"heartbeat": ".inf"}),
])
def test_nan_and_infinity_are_configuration_errors(tmp_path, section, values):
    config = _write(tmp_path)
    document = yaml.safe_load(config.read_text())
    target = document["pools"][0] if section == "pools" else document.setdefault(section, {})
    target.update(values)
    config.write_text(yaml.safe_dump(document).replace("'", ""))  # .nan, not the string '.nan'
    for command in ("check", "run"):
        error = _one_paragraph(run_cli(command, "-c", str(config), env=wqd_env(tmp_path / "r")), EX_CONFIG)
        assert "got nan" in error or "got inf" in error or "got -inf" in error, error


# -- 4. YAML limits, in the loader of check, run and reload --

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi"))


# Runs a command and prints its exit code and peak RSS (KiB). It is a fresh,
# small process: a child forked straight from pytest would count pytest's own
# memory in its peak (Linux keeps the high-water mark across exec).
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _measured(args, env, timeout=60):
    """(returncode, stderr, seconds, peak RSS in MiB) of a wqd command."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _MEASURE, WQD, *args], env=env, capture_output=True,
                            text=True, timeout=timeout)
    code, peak_kib = map(int, result.stdout.split())
    return code, result.stderr, time.monotonic() - started, peak_kib / 1024


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_yaml_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path, command):
    path = tmp_path / "wqd.yaml"
    path.write_text(_write(tmp_path).read_text() + BILLION_LAUGHS)
    code, stderr, seconds, peak_mib = _measured([command, "-c", str(path)], wqd_env(tmp_path / "r"))
    assert code == EX_CONFIG, stderr
    assert "the document, its aliases expanded, is larger than wqd accepts (10000 nodes" in stderr
    assert "Traceback" not in stderr
    assert seconds < 10 and peak_mib < 200, (seconds, peak_mib)


@pytest.mark.parametrize("text, problem", [
    ("a: &a [*a]\n", "alias *a refers to a collection that contains it"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "the document nests deeper than 32 levels"),
])
def test_recursive_and_deeply_nested_yaml_is_refused(tmp_path, text, problem):
    path = tmp_path / "wqd.yaml"
    path.write_text(text)
    assert problem in _one_paragraph(run_cli("check", "-c", str(path)), EX_CONFIG)


def test_a_config_file_over_1_mib_is_refused(tmp_path):
    path = tmp_path / "wqd.yaml"
    path.write_text(_write(tmp_path).read_text() + "#" * (1024 * 1024) + "\n")
    error = _one_paragraph(run_cli("check", "-c", str(path)), EX_CONFIG)
    assert f"{path}: the configuration file is larger than 1048576 bytes (1 MiB), the most wqd reads" in error


def test_a_reload_with_an_alias_bomb_is_refused_and_the_master_keeps_serving(queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.config_path.write_text(wqd.config_path.read_text() + BILLION_LAUGHS)
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in wqd.logs(), 30, message=wqd.logs)
    assert "aliases expanded, is larger than wqd accepts" in wqd.logs()
    assert wqd.http("/healthz")[0] == 200 and wqd.proc.poll() is None


# -- 5. handler kinds wqd would never run --


@pytest.mark.parametrize("handler, kind", [
    ("handler_kinds:coroutine_function", "an async def function (a coroutine function)"),
    ("handler_kinds:partial_coroutine", "an async def function (a coroutine function)"),
    ("handler_kinds:generator_function", "a generator function"),
    ("handler_kinds:async_generator_function", "an async generator function"),
    ("handler_kinds:async_callable", "an async def function (a coroutine function)"),
    ("handler_kinds:generator_callable", "a generator function"),
])
def test_handlers_whose_body_would_never_run_are_refused(tmp_path, handler, kind):
    config = _write(tmp_path, handler=handler)
    for command in ("check", "run"):
        error = _one_paragraph(run_cli(command, "-c", str(config), env=wqd_env(tmp_path / "r")), EX_CONFIG)
        assert f"pools[0].handler: {handler!r} is {kind}; wqd runs a handler as a plain function" in error


def test_a_plain_callable_object_is_a_handler(tmp_path):
    result = run_cli("check", "-c", str(_write(tmp_path, handler="handler_kinds:plain_callable")),
                     env=wqd_env(tmp_path / "r"))
    assert result.returncode == 0, result.stderr


# -- 6. a broker address that is not a broker --


class MisbehavingPeer:
    """A loopback TCP server that accepts, then stays silent, closes at once,
    or sends what is not AMQP."""

    REPLIES = {
        "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",  # never a whole AMQP frame
        "bad-frame": struct.pack(">BHL", 1, 0, 4) + b"\x00\x63\x00\x02" + b"\xce",  # an unknown method
    }

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            if self.behaviour == "close":
                connection.close()
                continue
            if self.behaviour in self.REPLIES:
                connection.sendall(self.REPLIES[self.behaviour])
            self.held.append(connection)

    def close(self):
        self.server.close()
        for connection in self.held:
            connection.close()


@pytest.mark.parametrize("behaviour, words", [
    ("silent", f"accepted the TCP connection but did not complete the AMQP handshake within "
               f"{amqp.CONNECT_TIMEOUT} s"),
    ("http", f"did not complete the AMQP handshake within {amqp.CONNECT_TIMEOUT} s"),
    ("close", "closed the connection before the AMQP handshake ended"),
    ("bad-frame", "answered with something that is not AMQP 0-9-1"),
])
@pytest.mark.parametrize("command", ["status", "publish"])
@pytest.mark.slow  # two of its cases wait out the 10 s connect timeout
def test_an_address_that_is_not_a_broker_is_exit_69_within_the_connect_timeout(tmp_path, behaviour, words,
                                                                                command):
    peer = MisbehavingPeer(behaviour)
    try:
        url = f"amqp://guest:S3CRet@127.0.0.1:{peer.port}/%2F"
        started = time.monotonic()
        result = run_cli(command, "-c", str(_write(tmp_path, url)), *(["hello"] if command == "publish" else []),
                         env=wqd_env(tmp_path / "r"))
        elapsed = time.monotonic() - started
    finally:
        peer.close()
    error = _one_paragraph(result, EX_UNAVAILABLE, "S3CRet")
    assert f"the broker at amqp://guest:***@127.0.0.1:{peer.port}/%2F" in error \
        or f"the server at amqp://guest:***@127.0.0.1:{peer.port}/%2F" in error, error
    assert words in error
    assert elapsed < amqp.CONNECT_TIMEOUT + 8, elapsed


# -- 7. a master that is slow to answer is not "not running" --


def test_status_tells_a_master_that_does_not_answer_from_one_that_does_not_run(queue_name, make_wqd, tmp_path):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    env = wqd_env(tmp_path / "r")
    os.kill(wqd.proc.pid, signal.SIGSTOP)
    try:
        text = run_cli("status", "-c", str(wqd.config_path), env=env)
        as_json = run_cli("status", "-c", str(wqd.config_path), "--json", env=env)
    finally:
        os.kill(wqd.proc.pid, signal.SIGCONT)
    assert text.returncode == 0, text.stderr
    assert "not running" not in text.stdout
    assert (f"wqd master: unknown, a process listens on 127.0.0.1:{wqd.port} but did not answer /status "
            f"within 2 s") in text.stdout
    master = yaml.safe_load(as_json.stdout)["master"]
    assert master["running"] is None and "did not answer /status within 2 s" in master["problem"]
    wqd.stop()
    text = run_cli("status", "-c", str(wqd.config_path), env=env)
    assert "wqd is not running (nothing listens on metrics.listen)" in text.stdout
