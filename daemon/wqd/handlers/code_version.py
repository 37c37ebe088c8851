"""Which modules are the application's handler code, and which version of it
runs: what makes a reload a code deploy.

The master imports the handlers once, at its start, and its forks share
them. A SIGHUP's loading child forgets those modules and imports them again
from disk, so it checks the code deployed now; when the files differ from
the master's (``fingerprint``), every worker is replaced, and each new worker
forgets the master's copy of those modules and imports the code on disk
itself (``fresh_import``), so that it never runs the master's old code.
"""

import hashlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeVersion:
    """The modules loading the handlers imported, and a digest of their files."""

    modules: tuple
    fingerprint: str


def imported_since(before: set) -> CodeVersion:
    """The modules imported since ``before`` (a set of sys.modules' names)."""
    modules = tuple(sorted(set(sys.modules) - before))
    return CodeVersion(modules, fingerprint(modules))


def fingerprint(modules) -> str:
    """A digest of the files ``modules`` were loaded from (their contents), so
    that a deploy of any of them, a library the handler imported included,
    changes it; a module without a file (built in, namespace) adds its name only."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode() + b"\0")
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            try:
                with open(path, "rb") as source:
                    digest.update(hashlib.sha256(source.read()).digest())
            except OSError:
                digest.update(b"unreadable")
    return digest.hexdigest()


def forget(modules) -> None:
    """Drop ``modules`` from this process's import cache (in a child of the
    master), so that the next import reads them from disk; the import path is
    the master's, the working directory included (cli.py)."""
    for name in modules:
        sys.modules.pop(name, None)
