"""The outbox section's value checks (its keys are declared in schema.py)."""

import re
from typing import Any


def postgres_dsn(value: Any) -> str:
    """A libpq connection string or postgresql:// URL (from $WQD_OUTBOX_DSN: a one-item list)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a PostgreSQL connection string (postgresql://... or key=value ...)")
    if "://" in value and not re.match(r"postgres(ql)?://", value, re.IGNORECASE):
        raise ValueError("expected a postgresql:// URL or a key=value connection string")
    return value


def outbox_table(value: Any) -> str:
    """A plain SQL name, or schema.name: it is written into SQL statements, so nothing that needs quoting."""
    if not isinstance(value, str) or not re.fullmatch(r"([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,50}", value):
        raise ValueError("expected a lower-case SQL name (letters, digits, _), optionally schema.name")
    return value


def psycopg_problem():
    """Why an outbox cannot be relayed here (psycopg 3 missing), or None; imports psycopg only when asked."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        return (f"psycopg 3 is not installed ({exc}): install wqd with its outbox extra, "
                f"pip install 'wqd[outbox]'")
    return None
