"""A process's end in words, for the log lines of the master (its workers and
children) and of the exec handlers (their commands): one phrasing for all."""

import os
import signal


def describe_code(code: int) -> str:
    """``code`` as os.waitstatus_to_exitcode gives it: an exit code, or minus the signal."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def describe(status: int) -> str:
    """A wait status, as os.waitpid gives it."""
    return describe_code(os.waitstatus_to_exitcode(status))
