"""The console's token file (console.token_file): who may act, by name.

One token alone on a line (the whole file), or ``name:token`` lines; blank
lines and lines starting with # are skipped. A token is at least MIN_LENGTH
characters. The name is what the audit log says did an action.
"""

import hmac
from typing import Optional

MIN_LENGTH = 16
MAX_BYTES = 64 * 1024
DEFAULT_NAME = "operator"  # the name of a file's lone token


def load(path: str) -> dict:
    """token -> name; raise ValueError saying what is wrong and on which line."""
    with open(path, "rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"expected a token file of at most {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("expected a token file in UTF-8") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError("expected a token file holding a token, or name:token lines")
    found = {}
    for number, line in lines:
        name, colon, token = line.partition(":")
        if not colon:
            if len(lines) > 1:
                raise ValueError(f"expected name:token on line {number} (a token alone must be the only line)")
            name, token = DEFAULT_NAME, line
        name, token = name.strip(), token.strip()
        if not name or not name.isprintable():
            raise ValueError(f"expected a printable name before the colon on line {number}")
        if len(token) < MIN_LENGTH or not token.isprintable():
            raise ValueError(f"expected a token of at least {MIN_LENGTH} printable characters on line {number}")
        if token in found:
            raise ValueError(f"expected each token once; line {number} repeats one")
        found[token] = name
    return found


def who(tokens: dict, offered: str) -> Optional[str]:
    """The name of the token ``offered``, or None; compares every token in constant time."""
    name = None
    for token, token_name in tokens.items():
        if hmac.compare_digest(token.encode(), offered.encode("utf-8", "replace")):
            name = token_name
    return name
