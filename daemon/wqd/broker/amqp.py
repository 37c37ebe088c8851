"""Broker connections: parameters from the config, and errors in plain words."""

import re
import socket
import ssl
from typing import Optional

import pika
import pika.exceptions
from pika.adapters.utils import connection_workflow

from wqd import errors
from wqd.broker.header_decoding import header_text
from wqd.config import BrokerConfig, TLSConfig, redact_url

# Errors after which a fresh connection is the cure. pika raises the
# connection workflow's errors (a broker that accepts TCP and never answers:
# AMQPConnectorStackTimeout) outside its AMQPError hierarchy.
RECOVERABLE = (pika.exceptions.AMQPError, OSError, connection_workflow.AMQPConnectorException)

# Seconds to wait for TCP connect and the AMQP handshake before giving up.
CONNECT_TIMEOUT = 10
# A publish blocked by a broker memory or disk alarm fails after this long.
BLOCKED_CONNECTION_TIMEOUT = 30

# OpenSSL verify codes (X509_V_ERR_*) and what the operator should look at.
_UNKNOWN_CA = "does broker.tls.ca_file name the CA that signed the broker's certificate?"
_VERIFY_HINTS = {
    2: _UNKNOWN_CA,
    18: _UNKNOWN_CA,
    19: _UNKNOWN_CA,
    20: _UNKNOWN_CA,
    10: "renew the broker's certificate, or check this machine's clock",
    62: "the URL's host must be a name in the broker's certificate",
    64: "the URL's host must be an address in the broker's certificate",
}
_SSL_REASON_HINTS = {
    "WRONG_VERSION_NUMBER": "is that port a TLS listener? amqps:// needs one, usually port 5671",
    "TLSV1_ALERT_UNKNOWN_CA": "the broker does not trust broker.tls.cert_file",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker wants a client certificate: set broker.tls.cert_file",
}


# What to change when the broker timed a delivery out (docs/delivery-guarantees.md).
CONSUMER_TIMEOUT_ADVICE = (
    "give the pool a time_limit (on RabbitMQ 3.11.15+ wqd then creates its queue with a consumer timeout "
    "that covers it; for an existing queue set a consumer-timeout policy), or raise consumer_timeout in "
    "the broker's rabbitmq.conf")


class TLSFileError(OSError):
    """A file named in broker.tls cannot be loaded (missing, unreadable, not PEM,
    key not matching the certificate). An OSError, so every caller that copes
    with an unreachable broker copes with this too; str() names key and file."""


def parameters(broker: BrokerConfig, url=None) -> pika.URLParameters:
    """Connection parameters for one URL of ``broker`` (its own by default)."""
    params = pika.URLParameters(url or broker.url)
    params.heartbeat = broker.heartbeat
    params.connection_attempts = 1
    params.socket_timeout = CONNECT_TIMEOUT
    params.stack_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    params.client_properties = {"connection_name": f"wqd {socket.gethostname()}"}
    if params.ssl_options is not None:  # an amqps:// URL
        # The URL's host is the name the certificate must carry (and the SNI);
        # pika's default leaves it unset, and Python then refuses to verify.
        params.ssl_options = pika.SSLOptions(tls_context(broker.tls), server_hostname=params.host)
    return params


def tls_context(tls: Optional[TLSConfig]) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name.

    Built for every connection, so renewed certificate files are picked up at
    the next reconnect. With ca_file, only that CA is trusted; without it, the
    system's CAs are (OpenSSL also honours $SSL_CERT_FILE and $SSL_CERT_DIR).
    """
    tls = tls or TLSConfig()
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise TLSFileError(f"cannot use broker.tls.ca_file {tls.ca_file!r}: {_ssl_text(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except OSError as exc:
            files = f"{tls.cert_file!r}" + (f" with broker.tls.key_file {tls.key_file!r}" if tls.key_file else "")
            raise TLSFileError(f"cannot use broker.tls.cert_file {files}: {_ssl_text(exc)}") from None
    return context


class HandshakeTimeout(pika.exceptions.AMQPConnectionError):
    """The address took the TCP connection but no AMQP handshake completed in time."""


class ClosedDuringHandshake(pika.exceptions.AMQPConnectionError):
    """The address took the TCP connection, then closed it before the AMQP handshake ended."""


def open_connection(params: pika.URLParameters) -> pika.BlockingConnection:
    """pika.BlockingConnection(params), every failure of which is an AMQPError
    or an OSError: pika lets some of its connection-workflow errors (a peer
    that accepts TCP and stays silent) out as they are, past any caller's
    ``except AMQPError``, so they become AMQPConnectionErrors here."""
    try:
        return pika.BlockingConnection(params)
    except connection_workflow.AMQPConnectorStackTimeout:
        raise HandshakeTimeout(f"{params.stack_timeout:g}") from None
    except pika.exceptions.StreamLostError as exc:
        raise ClosedDuringHandshake(*exc.args) from None
    except connection_workflow.AMQPConnectorException as exc:
        raise pika.exceptions.AMQPConnectionError(exc) from None


def connect(broker: BrokerConfig, url=None, name=None) -> pika.BlockingConnection:
    params = parameters(broker, url)
    if name:
        params.client_properties = {"connection_name": name}
    return open_connection(params)


def server_version(connection: pika.BlockingConnection):
    """(product, version as a tuple of ints) the broker announced, e.g.
    ("RabbitMQ", (3, 10, 8)); ("", ()) when it did not say."""
    return announced_version(getattr(connection._impl, "server_properties", None))  # pika keeps them on its impl


def announced_version(properties):
    """server_version() from the server properties of connection.start (any client's)."""
    properties = properties or {}
    product, version = (header_text(value) or "" for value in (properties.get("product"), properties.get("version")))
    numbers = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    return product, tuple(int(part) for part in numbers.groups() if part is not None) if numbers else ()


def broker_closed(channel):
    """The ChannelClosedByBroker with which the broker closed ``channel`` (say, a
    consumer timeout while a handler ran), or None. pika raises it only from a
    call that waits on the channel; an ack on it raises ChannelWrongStateError,
    which does not say why."""
    reason = getattr(channel, "_closing_reason", None)  # pika keeps it private
    if channel is not None and channel.is_closed and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        return reason
    return None


def describe_server(connection: pika.BlockingConnection) -> str:
    """The broker's product and version as it announced them, e.g. "RabbitMQ 4.0.5"."""
    product, version = server_version(connection)
    return " ".join(part for part in (product, ".".join(str(n) for n in version)) if part) or "unknown"


def server_notes(version: tuple) -> list:
    """What of the broker's version changes wqd's promises, a few words each
    (the connect log, `wqd status`)."""
    if version >= (4, 3):
        return ["metadata store Khepri (4.3 removed Mnesia)",
                "classic queues have no consumer timeout (a classic pool's time_limit is wqd's alone)"]
    return []


class BrokerUnavailable(errors.BrokerUnavailable):
    """No broker URL could be connected to; str() says why, per URL."""

    def __init__(self, errors: list):
        super().__init__("; ".join(describe_error(exc, url) for url, exc in errors))
        self.errors = errors


def connect_any(broker: BrokerConfig, name=None, first: int = 0):
    """Connect to the first reachable URL, trying them in order from ``first``;
    return (connection, index of its URL)."""
    errors = []
    for offset in range(len(broker.urls)):
        index = (first + offset) % len(broker.urls)
        try:
            return connect(broker, broker.urls[index], name), index
        except (pika.exceptions.AMQPError, OSError) as exc:
            errors.append((broker.urls[index], exc))
    raise BrokerUnavailable(errors)


def describe_error(exc: BaseException, url: str) -> str:
    """One sentence on why the broker at ``url`` could not be used; no password."""
    where = redact_url(url)
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return f"the broker at {where} refused the credentials (check the user name and password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"the broker at {where} denied access to the virtual host (does it exist, may this user use it?)"
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return f"the broker at {where} closed the connection: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.ConnectionBlockedTimeout):
        return (f"the broker at {where} blocked publishing for more than {BLOCKED_CONNECTION_TIMEOUT} s "
                f"(a memory or disk alarm: see `rabbitmq-diagnostics alarms`)")
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        if "delivery acknowledgement" in exc.reply_text:
            return (f"the broker at {where} closed the channel because a delivery outlived its "
                    f"consumer_timeout: {exc.reply_text}; {CONSUMER_TIMEOUT_ADVICE}")
        return f"the broker at {where} closed the channel: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.ConsumerCancelled):
        return f"{exc.args[0] if exc.args else 'the broker cancelled the consumer'} at {where}"
    if isinstance(exc, TLSFileError):
        return f"cannot connect to the broker at {where}: {exc}"
    if isinstance(exc, HandshakeTimeout):
        return (f"the broker at {where} accepted the TCP connection but did not complete the AMQP handshake "
                f"within {exc} s (is that address a RabbitMQ AMQP listener, and is the broker overloaded?)")
    if isinstance(exc, pika.exceptions.IncompatibleProtocolError) and any(
            words in str(exc) for words in ("Transport indicated EOF", "ConnectionResetError")):
        exc = ClosedDuringHandshake(*exc.args)  # pika's words for a peer that closed (or reset) at once
    if isinstance(exc, pika.exceptions.IncompatibleProtocolError):
        detail = _innermost(exc.args[0] if exc.args else exc)[:200]
        return (f"the server at {where} answered with something that is not AMQP 0-9-1 ({detail}); is that "
                f"address a RabbitMQ AMQP listener? (a TLS one needs amqps://)")
    if isinstance(exc, ClosedDuringHandshake):
        return (f"the server at {where} closed the connection before the AMQP handshake ended; is that "
                f"address a RabbitMQ AMQP listener? (a TLS one needs amqps://)")
    root = root_error(exc)
    if isinstance(root, ssl.SSLError):
        return f"TLS handshake with the broker at {where} failed: {_describe_tls(root)}"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        inner = exc.args[0] if exc.args else None
        detail = _innermost(inner) if inner is not None else type(exc).__name__
        return f"cannot reach the broker at {where}: {detail}"
    if isinstance(exc, OSError):
        return f"cannot reach the broker at {where}: {exc.strerror or exc}"
    return f"broker error at {where}: {type(exc).__name__}: {exc}"


def _describe_tls(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"certificate verify failed: {str(exc.verify_message).rstrip('.')}"
        hint = _VERIFY_HINTS.get(exc.verify_code)
    else:
        text = _ssl_text(exc)
        hint = _SSL_REASON_HINTS.get(exc.reason)
    return f"{text} ({hint})" if hint else text


def _ssl_text(exc: OSError) -> str:
    """OpenSSL's words without the "[SSL: CODE]" prefix and "(_ssl.c:NNN)" suffix."""
    text = str(exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc.strerror or exc)
    return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)


def root_error(exc: BaseException) -> BaseException:
    """The error under pika's wrappers (AMQPConnectionError args, .exception chains)."""
    value = exc
    while True:
        if isinstance(value, pika.exceptions.AMQPConnectionError) and value.args:
            value = value.args[0]
        elif isinstance(value, (tuple, list)) and value:
            value = value[-1]
        elif getattr(value, "exception", None) is not None:
            value = value.exception
        else:
            return value


def _innermost(value) -> str:
    """pika nests the socket error in tuples and wrapper exceptions; dig it out."""
    while isinstance(value, (tuple, list)) and value:
        value = value[-1]
    while getattr(value, "exception", None) is not None:
        value = value.exception
    if isinstance(value, OSError) and value.strerror:
        return value.strerror
    return str(value) or type(value).__name__
