"""`wqd outbox init` and `wqd outbox list`: what they do and find (cli/outbox.py prints it)."""

from wqd import errors
from wqd.outbox import database, schema

# `wqd outbox list` shows at most this many rows of each kind (the counts are whole).
SHOWN_ROWS = 50
PREVIEW_BYTES = 60


def outbox_of(config):
    """The config's outbox section; ConfigError when it has none."""
    if config.outbox is None:
        raise errors.ConfigError(f"{config.path}: outbox: the file has no outbox section (outbox: {{dsn: ...}}), "
                                 f"so there is no outbox table to use")
    return config.outbox


def init(config) -> str:
    """Create the table (idempotent); return the table's name."""
    outbox = outbox_of(config)
    psycopg = database.psycopg()
    with database.connect(outbox.dsn, autocommit=True) as connection:
        try:
            with connection.transaction():
                comment, exists = connection.execute(schema.version_sql(), (outbox.table, outbox.table)).fetchone()
                if exists and schema.version_problem(outbox.table, comment, exists):
                    raise errors.ConfigError(f"outbox.table: {schema.version_problem(outbox.table, comment, exists)}")
                connection.execute(schema.create_sql(outbox.table))
        except psycopg.Error as exc:
            raise errors.WqdError(f"cannot create the outbox table {outbox.table}: {database.describe(exc)}") from None
    return outbox.table


def listing(config) -> dict:
    """The rows waiting and the rows set aside (SHOWN_ROWS of each, oldest first), and their counts."""
    outbox = outbox_of(config)
    psycopg = database.psycopg()
    table = outbox.table
    with database.connect(outbox.dsn, autocommit=True) as connection:
        try:
            comment, exists = connection.execute(schema.version_sql(), (table, table)).fetchone()
            problem = schema.version_problem(table, comment, exists)
            if problem:
                raise errors.ConfigError(f"outbox.table: {problem}")
            counts = connection.execute(f"SELECT count(*) FILTER (WHERE refused_at IS NULL), "
                                        f"count(*) FILTER (WHERE refused_at IS NOT NULL) FROM {table}").fetchone()
            columns = ("id, message_id, queue, octet_length(body), substring(body FROM 1 FOR %s), "
                       "extract(epoch FROM clock_timestamp() - created_at), refused_reason")
            waiting = connection.execute(f"SELECT {columns} FROM {table} WHERE refused_at IS NULL ORDER BY id "
                                         f"LIMIT %s", (PREVIEW_BYTES, SHOWN_ROWS)).fetchall()
            set_aside = connection.execute(f"SELECT {columns} FROM {table} WHERE refused_at IS NOT NULL "
                                           f"ORDER BY id LIMIT %s", (PREVIEW_BYTES, SHOWN_ROWS)).fetchall()
        except psycopg.Error as exc:
            raise errors.WqdError(f"cannot read the outbox table {table}: {database.describe(exc)}") from None
    return {"table": table, "waiting_count": counts[0], "set_aside_count": counts[1],
            "waiting": [_row(row) for row in waiting], "set_aside": [_row(row) for row in set_aside]}


def _row(row) -> dict:
    row_id, message_id, queue, size, preview, age, reason = row
    return {"id": row_id, "message_id": message_id, "queue": queue, "bytes": size,
            "body": bytes(preview).decode("utf-8", "replace"), "age_seconds": round(float(age), 3),
            "refused_reason": reason}

