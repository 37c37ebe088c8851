"""Broker URLs: their passwords, percent-encoding and redaction (a URL in an
error or a log line never shows its password)."""

import re
from typing import Optional, Union
from urllib.parse import quote

# -- URLs and their passwords --


def url_password(url: str) -> Optional[str]:
    """The password a URL holds (None or "": none)."""
    return _split_userinfo(url)[2]


def with_password(url: str, password: str) -> str:
    """``url`` with ``password``, every character of it taken as it is;
    ValueError when the URL names no user to give it to."""
    prefix, user, _, rest = _split_userinfo(url)
    if rest is None:
        raise ValueError("names no user for the password: write amqp://USER@HOST/...")
    return f"{prefix}{user}:{quote(password, safe='')}@{rest}"


def _split_userinfo(url: str):
    """(the text up to and with the first "scheme://" (or ""), user, password
    or None, the part after the user info or None when there is no "@").

    The user info runs to the last "@", so a password may hold any character
    ("@", "/", "#", "?", ":" and "," included) and is still found whole; a raw
    "@" after the host (in a virtual host) must be written %40.
    """
    prefix = url[:_scheme_end(url)]
    userinfo, at, rest = url[len(prefix):].rpartition("@")
    if not at:
        return prefix, None, None, None
    user, colon, password = userinfo.partition(":")
    return prefix, user, (password if colon else None), rest


def _scheme_end(text: str) -> int:
    """The end of the first "scheme://" in ``text``, or 0. Linear in the text's
    length: a regular expression search for it is quadratic on a long run of
    letters (a 100 KB value took a minute)."""
    start = 0
    while True:
        separator = text.find("://", start)
        if separator < 0:
            return 0
        begin = separator
        while begin > 0 and (text[begin - 1].isascii() and (text[begin - 1].isalnum() or text[begin - 1] in "+.-")):
            begin -= 1
        while begin < separator and not text[begin].isalpha():
            begin += 1  # a scheme starts with a letter
        if begin < separator:
            return separator + 3
        start = separator + 1


def _percent_encode(text: str) -> str:
    """Percent-encode what would end a URL's user info early or that a URL
    parser may refuse ("/", "?", "#", "@", ":", spaces, controls, non-ASCII);
    "%" is kept, as it already encodes."""
    return quote(text, safe="!$&'()*+,;=%")


def _encode_userinfo(url: str) -> str:
    """The URL with its user and password percent-encoded where a raw character
    would make a URL parser (pika's) end them early: amqp://u:a/b@h becomes
    amqp://u:a%2Fb@h, the same password. A "%" is kept: it already encodes."""
    prefix, user, password, rest = _split_userinfo(url)
    if rest is None:
        return url
    userinfo = _percent_encode(user) + ("" if password is None else ":" + _percent_encode(password))
    return f"{prefix}{userinfo}@{rest}"


def redact_url(url: Union[str, None]) -> str:
    """Hide the password of a broker URL: amqp://guest:***@host, whatever
    characters the password holds. Without an "@", what follows the host's
    ":" is shown only if it is a port number (it may be a password whose "@"
    was forgotten)."""
    if not url:
        return str(url)
    prefix, user, password, rest = _split_userinfo(url)
    if rest is not None:
        return url if password is None else f"{prefix}{user}:***@{rest}"
    if not prefix:
        return url
    after_scheme = url[len(prefix):]
    authority = re.match(r"(\[[^\]]*\])?[^/?#]*", after_scheme).group(0)
    host_end = authority.find("]") + 1 if authority.startswith("[") else 0
    host, colon, port = authority[host_end:].partition(":")
    if not colon or port.isdigit():
        return url
    return f"{prefix}{authority[:host_end]}{host}:***"
