"""Every x-wqd-* header, once: what each says, and which of them describe one
delivery lineage (a copy leaves those behind). Headers come from whoever
published the message: each reader here treats a value it cannot use as
absent."""

# Set on retried copies: the attempt they will be.
ATTEMPT_HEADER = "x-wqd-attempt"
# Written by earlier versions; dropped from copies.
LOST_HEADER = "x-wqd-lost"
# Quorum queues: deliveries before this one (set by the broker).
DELIVERY_COUNT_HEADER = "x-delivery-count"
# Set by `wqd dead replay`: a replayed copy is a new lineage, and when.
REPLAYS_HEADER = "x-wqd-replays"
REPLAYED_AT_HEADER = "x-wqd-replayed-at"
# Set by a publisher on a message that may have been published before under
# the same message_id: its delivery asks whether it finished here (accounting.py).
CHECK_DUPLICATE_HEADER = "x-wqd-check-duplicate"
# A dead letter's: why and where it was given up on.
EXCEPTION_HEADER = "x-wqd-exception"
ERROR_HEADER = "x-wqd-error"
TRACEBACK_HEADER = "x-wqd-traceback"
ATTEMPTS_HEADER = "x-wqd-attempts"
POOL_HEADER = "x-wqd-pool"
QUEUE_HEADER = "x-wqd-queue"
HOST_HEADER = "x-wqd-host"
FAILED_AT_HEADER = "x-wqd-failed-at"
REASON_HEADER = "x-wqd-reason"
# Every header wqd writes starts so: a replayed copy drops them all.
WQD_PREFIX = "x-wqd-"

# Headers that describe one lineage in the broker: a copy (retry, dead letter) drops them.
LINEAGE_HEADERS = (ATTEMPT_HEADER, LOST_HEADER, DELIVERY_COUNT_HEADER)
# Longest numeric header string read (a count of ten digits is far past any limit).
NUMBER_DIGITS = 10


def header_number(headers: dict, name: str):
    """The non-negative integer in header ``name``, or None when it is absent or
    anything else: a header is untrusted input. Digit strings count (a header
    set on a command line is a string); bool, float, nested values do not."""
    value = headers.get(name)
    if isinstance(value, int) and not isinstance(value, bool):  # pika decodes 64-bit ones as its int subclass
        return value if value >= 0 else None
    if isinstance(value, (str, bytes)) and 0 < len(value) <= NUMBER_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def retry_headers(headers: dict, attempt: int) -> dict:
    """The headers of the copy retried after failed attempt ``attempt``."""
    updated = without_lineage(headers)
    updated[ATTEMPT_HEADER] = attempt + 1
    return updated


def without_lineage(headers) -> dict:
    """A copy of ``headers`` without the counts of the lineage it leaves."""
    if not isinstance(headers, dict):
        return {}
    return {name: value for name, value in headers.items() if name not in LINEAGE_HEADERS}
