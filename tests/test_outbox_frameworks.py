"""docs/outbox.md's SQLAlchemy and Django snippets, as written, against a real
PostgreSQL: the row is in the framework's transaction, committed with it or
rolled back with it."""

import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.support.daemon import run_cli
from wqd.outbox import enqueue


def _outbox_table(dsn: str, tmp_path) -> None:
    config = tmp_path / "wqd.yaml"
    config.write_text(f"outbox: {{dsn: '{dsn}'}}\npools: [{{name: p, queue: q, handler: 'handlers:task'}}]\n")
    done = run_cli("outbox", "init", "-c", str(config))
    assert done.returncode == 0, done.stderr


def _message_ids(dsn: str) -> list:
    with psycopg.connect(dsn) as connection:
        return [row[0] for row in connection.execute("SELECT message_id FROM wqd_outbox ORDER BY id")]


def test_enqueue_in_an_sqlalchemy_session(outbox_dsn, tmp_path):
    _outbox_table(outbox_dsn, tmp_path)
    engine = create_engine(outbox_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    with Session(engine) as session, session.begin():
        session.execute(text("CREATE TABLE orders (id serial PRIMARY KEY, item text)"))
    with Session(engine) as session, session.begin():
        order = session.execute(text("INSERT INTO orders (item) VALUES ('mug') RETURNING id")).scalar_one()
        enqueue(session.connection().connection.driver_connection, "receipts", {"order": order},
                message_id=f"receipt-{order}")
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("INSERT INTO orders (item) VALUES ('cup')"))
            enqueue(session.connection().connection.driver_connection, "receipts", {"order": 0},
                    message_id="rolled-back")
            raise RuntimeError("the application fails before the commit")
    except RuntimeError:
        pass
    engine.dispose()
    assert _message_ids(outbox_dsn) == [f"receipt-{order}"]


DJANGO_SCRIPT = """
import django
from django.conf import settings

settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": %(name)r,
                                          "USER": %(user)r, "HOST": %(host)r, "PORT": %(port)r}})
django.setup()

from django.db import connection, transaction
from wqd.outbox import enqueue

with transaction.atomic():
    enqueue(connection, "receipts", {"order": 1}, message_id="django-committed")
try:
    with transaction.atomic():
        enqueue(connection, "receipts", {"order": 2}, message_id="django-rolled-back")
        raise RuntimeError("the view fails before the commit")
except RuntimeError:
    pass
print("done")
"""


def test_enqueue_on_djangos_connection(outbox_dsn, tmp_path):
    _outbox_table(outbox_dsn, tmp_path)
    parts = urlsplit(outbox_dsn)
    script = DJANGO_SCRIPT % {"name": parts.path.lstrip("/"), "user": parts.username, "host": parts.hostname,
                              "port": str(parts.port)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert _message_ids(outbox_dsn) == ["django-committed"]
