"""An order form whose receipt task is enqueued in the order's own transaction.

POST /orders {"item": "mug", "quantity": 2} creates the order, takes the
quantity from the stock and enqueues "send the receipt" with wqd.outbox, all
in one PostgreSQL transaction: out of stock, the transaction rolls back and
no receipt is ever sent; committed, wqd's relay publishes the task (once the
commit is done, so the worker always finds the order).

    ORDERS_DSN=postgresql://... RECEIPTS_QUEUE=receipts gunicorn -w 2 -b 127.0.0.1:8000 app:app
"""

import os

import psycopg
from flask import Flask, jsonify, request

from wqd.outbox import enqueue

app = Flask(__name__)


class OutOfStock(Exception):
    pass


@app.post("/orders")
def create_order():
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("item"), str) \
            or not isinstance(data.get("quantity"), int) or data["quantity"] < 1:
        return jsonify(error='expected {"item": str, "quantity": int >= 1}'), 400
    try:
        # The block commits when it ends, and rolls back on an exception.
        with psycopg.connect(os.environ["ORDERS_DSN"]) as connection:
            order_id = connection.execute("INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id",
                                          (data["item"], data["quantity"])).fetchone()[0]
            receipt = enqueue(connection, os.environ.get("RECEIPTS_QUEUE", "receipts"), {"order": order_id},
                              message_id=f"receipt-{order_id}")
            taken = connection.execute("UPDATE stock SET left_in_stock = left_in_stock - %s "
                                       "WHERE item = %s AND left_in_stock >= %s",
                                       (data["quantity"], data["item"], data["quantity"]))
            if taken.rowcount != 1:
                raise OutOfStock(data["item"])
    except OutOfStock as exc:
        return jsonify(error=f"{exc} is out of stock"), 409
    return jsonify(order=order_id, receipt_task=receipt), 201
