"""wqd's typed errors. Modules raise these; only cli.py turns them into exit
codes (its EXIT_CODES table), so every command reports a failure the same way."""


class WqdError(Exception):
    """A failure an operator must act on; str() is the one paragraph to show."""


class ConfigError(WqdError):
    """The configuration, a handler or a queue's arguments cannot be used:
    restarting will not help (os.EX_CONFIG)."""


class BrokerUnavailable(WqdError):
    """No broker could be reached or it refused wqd (os.EX_UNAVAILABLE for
    one-shot commands; `wqd run` retries instead)."""


class InputError(WqdError):
    """Input a command was given cannot be used as it is: a line that is not
    UTF-8, a message larger than the broker takes (os.EX_DATAERR)."""


# An error longer than this is cut, saying so: one log line, not megabytes.
MAX_ERROR_CHARS = 4096


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text``, cut to about ``limit`` characters with a note saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... (cut: the error was {len(text)} characters long)"
