"""Broker connections: parameters from the config, and errors in plain words."""

import socket

import pika
import pika.exceptions

from wqd.config import BrokerConfig, redact_url

# Seconds to wait for TCP connect and the AMQP handshake before giving up.
CONNECT_TIMEOUT = 10
# A publish blocked by a broker memory or disk alarm fails after this long.
BLOCKED_CONNECTION_TIMEOUT = 30


def parameters(broker: BrokerConfig, url=None) -> pika.URLParameters:
    """Connection parameters for one URL of ``broker`` (its own by default)."""
    params = pika.URLParameters(url or broker.url)
    params.heartbeat = broker.heartbeat
    params.connection_attempts = 1
    params.socket_timeout = CONNECT_TIMEOUT
    params.stack_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    params.client_properties = {"connection_name": f"wqd {socket.gethostname()}"}
    return params


def connect(broker: BrokerConfig, url=None, name=None) -> pika.BlockingConnection:
    params = parameters(broker, url)
    if name:
        params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def describe_error(exc: BaseException, url: str) -> str:
    """One sentence on why the broker at ``url`` could not be used; no password."""
    where = redact_url(url)
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return f"the broker at {where} refused the credentials (check the user name and password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"the broker at {where} denied access to the virtual host (does it exist, may this user use it?)"
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return f"the broker at {where} closed the connection: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        inner = exc.args[0] if exc.args else None
        detail = _innermost(inner) if inner is not None else type(exc).__name__
        return f"cannot reach the broker at {where}: {detail}"
    if isinstance(exc, OSError):
        return f"cannot reach the broker at {where}: {exc.strerror or exc}"
    return f"broker error at {where}: {type(exc).__name__}: {exc}"


def _innermost(value) -> str:
    """pika nests the socket error in tuples and wrapper exceptions; dig it out."""
    while isinstance(value, (tuple, list)) and value:
        value = value[-1]
    while getattr(value, "exception", None) is not None:
        value = value.exception
    if isinstance(value, OSError) and value.strerror:
        return value.strerror
    return str(value) or type(value).__name__


def queue_arguments(queue_type: str):
    """Declare-time arguments; classic queues get none, matching plain declares."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else None
