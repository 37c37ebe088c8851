"""Message.text: the character set from the content type, a content
encoding only when it names one (clients put gzip, deflate or binary there)."""

import pytest
from pika.spec import BasicProperties

from wqd.message import Message


def text(body: bytes, **properties) -> str:
    return Message(body, BasicProperties(**properties), False, 1, "q", "p", "p[1]").text


@pytest.mark.parametrize("properties", [
    {}, {"content_encoding": "gzip"}, {"content_encoding": "binary"}, {"content_encoding": "deflate"},
    {"content_encoding": "rot13"}, {"content_encoding": "base64"}, {"content_encoding": "no-such-codec"},
    {"content_type": "text/plain; charset=no-such-codec"}, {"content_type": "application/json"},
])
def test_utf8_unless_a_character_set_is_named(properties):
    assert text("déjà vu".encode(), **properties) == "déjà vu"


@pytest.mark.parametrize("properties", [
    {"content_type": "text/plain; charset=latin-1"},
    {"content_type": 'text/plain; charset="ISO-8859-1"', "content_encoding": "gzip"},
    {"content_encoding": "latin-1"},  # where some clients put the charset
])
def test_a_named_character_set_decodes(properties):
    assert text("déjà vu".encode("latin-1"), **properties) == "déjà vu"


def test_the_content_types_charset_wins_over_the_content_encoding():
    assert text("ü".encode("utf-16"), content_type="text/plain; charset=utf-16", content_encoding="latin-1") == "ü"
