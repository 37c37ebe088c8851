"""examples/outbox: the Flask order form behind gunicorn, with real HTTP
requests: an order and its receipt task commit together or not at all."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from tests.support.broker import free_port, port_open
from tests.support.daemon import pool
from tests.support.outbox import rows_left, with_outbox
from tests.support.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "outbox"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def post(port: int, body: dict):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/orders", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_example_order_form_enqueues_receipts_of_committed_orders_only(make_wqd, queue_name, outbox_dsn,
                                                                           tmp_path):
    with psycopg.connect(outbox_dsn) as connection:
        connection.execute((EXAMPLE / "schema.sql").read_text())
        connection.execute("INSERT INTO stock VALUES ('mug', 5)")
    wqd = with_outbox(make_wqd([pool(queue_name, workers=2)]), outbox_dsn).start()
    port = free_port()
    env = {**os.environ, "ORDERS_DSN": outbox_dsn, "RECEIPTS_QUEUE": queue_name}
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen([GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "app:app"], cwd=EXAMPLE, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: server.poll() is None and port_open(port), 60,
                 message=lambda: (tmp_path / "gunicorn.log").read_text())
        answers = [post(port, {"item": "mug", "quantity": 2}) for _ in range(4)]  # 2 + 2, then out of stock
        answers.append(post(port, {"item": "mug", "quantity": 1}))
        answers.append(post(port, {"item": "mug", "quantity": "many"}))
    finally:
        server.terminate()
        server.wait(30)
    assert [code for code, _ in answers] == [201, 201, 409, 409, 201, 400], answers
    receipts = {answer["receipt_task"] for code, answer in answers if code == 201}
    assert receipts == {f"receipt-{answer['order']}" for code, answer in answers if code == 201}
    wait_for(lambda: {entry["message_id"] for entry in wqd.records("end")} == receipts, 60,
             message=lambda: f"receipts sent: {wqd.records('end')}\n{wqd.logs()}")
    wait_for(lambda: rows_left(outbox_dsn) == 0, 30)
    assert len(wqd.records("end")) == 3  # no receipt of an order that rolled back
    with psycopg.connect(outbox_dsn) as connection:
        assert connection.execute("SELECT count(*), sum(quantity) FROM orders").fetchone() == (3, 5)
        assert connection.execute("SELECT left_in_stock FROM stock").fetchone() == (0,)
