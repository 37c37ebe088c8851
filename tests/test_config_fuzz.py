"""Fuzzing the configuration loader: whatever document, text or bytes it is
given, the only exception out of it is ConfigError, and no error holds the
password of a broker URL. Each test is bounded to a few seconds."""

import copy
import os
import socket

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wqd import config
from wqd.config.urls import _percent_encode

SECRET = "S3CR/et@pa,ss#w?rd:x"
URL = f"amqp://guest:{SECRET}@127.0.0.1:5672/%2F"
VALID = {
    "broker": {"url": [URL, URL.replace("127.0.0.1", "localhost")], "heartbeat": 30},
    "metrics": {"listen": "127.0.0.1:9808"},
    "logging": {"level": "info", "format": "text"},
    "shutdown": {"graceful_timeout": 5},
    "pools": [{"name": "default", "queue": "q", "handler": "m:f", "workers": 2, "prefetch": 1,
               "queue_type": "classic", "max_retries": 3, "time_limit": 10, "dead_letter_queue": "q.dead",
               "max_tasks_per_child": 100, "max_memory_per_child": 512,
               "retry_delay": {"initial": 1, "max": 60, "factor": 2}}],
}
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.sampled_from([10**400, -1, 0, 65536, float("nan"), float("inf"), -float("inf"), 1e308]),
    st.text(max_size=20),
    st.sampled_from([URL, "amqp://", "amqps://h:0/", "amqp://u:p@h:99999/", "amqp://h/?heartbeat=x",
                     f"{URL}?ssl_options={{", "m:f", "127.0.0.1:99999", "[::1]:80", "", "~", "classic"]),
)
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from([URL, "url", "name"])),
                                        children, max_size=4), max_leaves=12)


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """metrics.listen resolves its host; here a name other than a loopback
    address fails as an unknown one would, without a query off this machine."""
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host in ("127.0.0.1", "::1", "localhost", "", None):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.delenv("WQD_BROKER_URL", raising=False)


def _containers(document, path=()):
    """(path, mapping or list) of every collection in the document."""
    yield path, document
    children = document.items() if isinstance(document, dict) else enumerate(document)
    for key, value in children:
        if isinstance(value, (dict, list)):
            yield from _containers(value, path + (key,))


def _parse_without_leaks(text: str) -> None:
    """Parse; a ConfigError is fine, any other exception fails the test, and
    no error may hold the password (raw or as the URL is encoded for pika)."""
    try:
        config.parse(text, "fuzz.yaml")
    except config.ConfigError as exc:
        message = str(exc)
        assert SECRET not in message and _percent_encode(SECRET) not in message, message
        assert "S3CR/et" not in message, message


@FUZZ
@given(data=st.data())
def test_mutated_documents_fail_only_with_a_configuration_error(data):
    document = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        path, container = data.draw(st.sampled_from(list(_containers(document))))
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"] if keys else ["add"]))
        if action == "replace":
            container[data.draw(st.sampled_from(keys))] = data.draw(VALUES)
        elif action == "delete":
            del container[data.draw(st.sampled_from(keys))]
        elif isinstance(container, dict):
            container[data.draw(st.text(max_size=12))] = data.draw(VALUES)
        else:
            container.append(data.draw(VALUES))
    environment = data.draw(st.one_of(st.none(), st.sampled_from([f"{URL},{URL}", f"{URL}, amqp://h:0/", "x,y"]),
                                      st.text(max_size=20)))
    if environment and "\0" not in environment:
        os.environ["WQD_BROKER_URL"] = environment
    try:
        _parse_without_leaks(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    finally:
        os.environ.pop("WQD_BROKER_URL", None)


VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)
YAML_CHARACTERS = st.text(alphabet="[]{}:,&*!|>'\"#-?@%\n\t ~.aZ09\\" + "\u00e9\ufeff", min_size=1, max_size=6)


@FUZZ
@given(data=st.data())
def test_mutated_text_fails_only_with_a_configuration_error(data):
    text = VALID_TEXT
    for _ in range(data.draw(st.integers(1, 5))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 8)))
        text = text[:start] + data.draw(st.one_of(st.just(""), YAML_CHARACTERS)) + text[end:]
    _parse_without_leaks(text)


@FUZZ
@given(raw=st.binary(max_size=200) | st.builds(lambda head, tail: VALID_TEXT.encode()[:head] + tail,
                                              st.integers(0, len(VALID_TEXT)), st.binary(max_size=20)))
def test_any_file_content_fails_only_with_a_configuration_error(tmp_path_factory, raw):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(raw)
    try:
        config.load(str(path))
    except config.ConfigError as exc:
        assert SECRET not in str(exc) and "S3CR/et" not in str(exc), str(exc)


@FUZZ
@given(password=st.text(min_size=1, max_size=24).filter(lambda text: "%" not in text))
def test_any_password_is_masked_and_reaches_pika_unchanged(password):
    """A password of any characters (but "%", which encodes) is read back whole
    by pika, and redact_url never shows it."""
    import pika

    url = f"amqp://user:{password}@127.0.0.1:5672/%2F"
    try:
        (cleaned,) = config.broker_urls(url)
    except ValueError as exc:
        assert password not in str(exc) or len(password) < 4
        return
    assert pika.URLParameters(cleaned).credentials.password == password
    assert config.redact_url(url) == config.redact_url(cleaned) == "amqp://user:***@127.0.0.1:5672/%2F"
