"""The outbox table's SQL, its schema version, and the names derived from the table's.

The version is kept in the table's comment ("wqd outbox, schema version N"),
so it travels with the table (pg_dump, a restore, a rename) and a later wqd
knows what it has to migrate. The relay refuses a table of another version.
"""

import re
from typing import Optional

VERSION = 1
COMMENT = f"wqd outbox, schema version {VERSION}"
_COMMENT_VERSION = re.compile(r"wqd outbox, schema version (\d+)")


def channel(table: str) -> str:
    """The LISTEN/NOTIFY channel of a table (its name, the schema's dot made an underscore)."""
    return table.replace(".", "__")


def _bare(table: str) -> str:
    return table.rpartition(".")[2]


def create_sql(table: str) -> str:
    """Every statement that creates the table (idempotent: IF NOT EXISTS, OR REPLACE)."""
    bare = _bare(table)
    return f"""\
CREATE TABLE IF NOT EXISTS {table} (
    id             bigserial PRIMARY KEY,
    message_id     text NOT NULL CHECK (message_id <> '' AND octet_length(message_id) <= 255),
    queue          text NOT NULL CHECK (queue <> '' AND octet_length(queue) <= 255),
    body           bytea NOT NULL,
    content_type   text,
    headers        jsonb CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object'),
    delay_seconds  integer NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    refused_at     timestamptz,
    refused_reason text
);
CREATE INDEX IF NOT EXISTS {bare}_waiting ON {table} (id) WHERE refused_at IS NULL;
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel(table)}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {bare}_notify ON {table};
CREATE TRIGGER {bare}_notify AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
COMMENT ON TABLE {table} IS '{COMMENT}';
"""


def version_sql() -> str:
    """One parameter (the table's name): its comment, NULL when there is no such table."""
    return "SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL"


def version_problem(table: str, comment: Optional[str], exists: bool) -> Optional[str]:
    """Why the relay cannot use the table (None: it can)."""
    if not exists:
        return f"the outbox table {table} does not exist: create it with `wqd outbox init -c CONFIG`"
    found = _COMMENT_VERSION.search(comment or "")
    if found is None:
        return (f"table {table} is not a wqd outbox (its comment does not say \"{COMMENT}\"): "
                f"choose another outbox.table, or create it with `wqd outbox init -c CONFIG`")
    if int(found.group(1)) != VERSION:
        return (f"the outbox table {table} has schema version {found.group(1)}; this wqd uses version {VERSION}: "
                f"run the wqd that created it, or `wqd outbox init` of that version to migrate")
    return None
