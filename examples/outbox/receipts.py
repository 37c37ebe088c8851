"""The receipt task wqd runs (pools[].handler: receipts:send_receipt)."""

import logging

import wqd

log = logging.getLogger("receipts")


def send_receipt(message: wqd.Message) -> None:
    order = message.json()["order"]
    log.info("Sending the receipt of order %s (task %s).", order, message.message_id)
