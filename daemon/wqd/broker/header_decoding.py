"""pika's decoding of header values, made to survive what any publisher can send.

pika turns an exception while decoding a frame into a lost connection. A
timestamp past year 9999 (or one the platform's time_t cannot hold), a
non-finite double, or tables nested deeper than Python's recursion limit
pass through RabbitMQ, but make pika raise: the worker reconnects, the broker
redelivers the message first, and the worker loses its connection again,
forever, with the queue blocked behind the message. ``install()`` wraps
pika's decoder so that such a value decodes to something pika can encode
again (for a retried or dead-lettered copy): None, the bytes of the value
skipped (each such type has a fixed size or a length prefix). Values that
decode fine are untouched.

A header meant as text may arrive as a str or, from another client, as
bytes: ``header_text`` reads either.
"""

import struct

import pika.data

_FIXED_SIZE = {b"T": 8, b"d": 8, b"f": 4}  # bytes after the type octet
_LENGTH_PREFIXED = (b"A", b"F")  # arrays and tables: a 4-byte length, then their bytes
_UNDECODABLE = (OverflowError, ValueError, OSError, RecursionError)


def header_text(value, errors: str = "replace"):
    """A header value meant as text: a str as it is, bytes decoded as UTF-8
    (undecodable bytes per ``errors``), anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors)
    return None


def install() -> None:
    """Wrap pika.data.decode_value (once): pika's tables and arrays call it by its module name."""
    if getattr(pika.data.decode_value, "wqd_tolerant", False):
        return
    decode_value = pika.data.decode_value

    def tolerant_decode_value(encoded, offset):
        try:
            return decode_value(encoded, offset)
        except _UNDECODABLE:
            kind = encoded[offset:offset + 1]
            if kind in _FIXED_SIZE:
                return None, offset + 1 + _FIXED_SIZE[kind]
            if kind in _LENGTH_PREFIXED:
                (length,) = struct.unpack_from(">I", encoded, offset + 1)
                return None, offset + 5 + length
            raise

    tolerant_decode_value.wqd_tolerant = True
    pika.data.decode_value = tolerant_decode_value
