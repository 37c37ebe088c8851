"""Connecting to the outbox's database, with errors that never show a password."""

import re

from wqd import errors
from wqd.config import redact_url

CONNECT_TIMEOUT = 10  # seconds (libpq's connect_timeout)
# The relay's connection notices a database host that stopped answering (a
# partition, a frozen server) within about half a minute, rather than waiting
# in a query for ever: TCP keepalives, and a limit on unacknowledged data.
DEAD_PEER_SETTINGS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                      "tcp_user_timeout": 30_000}


def psycopg():
    """The psycopg module; ConfigError when the wqd[outbox] extra is not installed."""
    try:
        import psycopg as module
    except ImportError as exc:
        raise errors.ConfigError(f"the outbox needs psycopg 3 ({exc}): install wqd with its outbox extra, "
                                 f"pip install 'wqd[outbox]'") from None
    return module


def redact_dsn(text: str) -> str:
    """A DSN, or a message quoting one, with its password masked (URL or key=value form)."""
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", str(text), flags=re.IGNORECASE)
    return re.sub(r"postgres(?:ql)?://\S+", lambda match: redact_url(match.group(0)), text, flags=re.IGNORECASE)


def describe(exc: BaseException) -> str:
    """One line for a database error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact_dsn(text)


def connect(dsn: str, **options):
    """A psycopg connection; errors.BrokerUnavailable (exit 69: try again later) when the database cannot be reached."""
    module = psycopg()
    try:
        return module.connect(dsn, connect_timeout=CONNECT_TIMEOUT, **options)
    except module.Error as exc:
        raise errors.BrokerUnavailable(f"cannot connect to the outbox database {redact_dsn(dsn)}: "
                                       f"{describe(exc)}") from None
