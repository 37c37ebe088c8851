"""The finished-messages ledger (deduplication.py) across master restarts:
written at stop, read at start.

The file: a header (magic, format version, entry size, entry count), the
entries oldest first (the digest's two halves and the lineage, little-endian
64-bit numbers), then a blake2b checksum of everything before it. It is
written to a temporary file in the same directory, synced, and renamed over
the old one, so a crash leaves the old file or the new one, never half of
one. Reading is bounded (at most the entries the file says it holds, and no
more than MAX_ENTRIES); a file that is unreadable, truncated, of another
version or corrupt is reported in one warning and the ledger starts empty:
a bad file costs duplicates, never a crash loop.

The path must name a regular file (or nothing yet). Anything else is a
configuration error (exit 78), found by the config's check and again when the
file is opened, without blocking: opening a FIFO for reading waits for a
writer, and a master waiting there before its loop starts would serve no
/healthz and act on no SIGTERM.
"""

import hashlib
import logging
import os
import struct
import tempfile
from typing import Optional

from wqd.config.checks import special_file, special_kind
from wqd.errors import ConfigError

log = logging.getLogger("wqd.master")

MAGIC = b"wqd-fin\n"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")  # magic, version, entry size, entry count
_ENTRY = struct.Struct("<QQQ")  # digest hi, digest lo, lineage
_CHECKSUM_BYTES = 16
MAX_ENTRIES = 50_000_000  # the largest capacity the configuration accepts


class BadFile(Exception):
    pass


class NotARegularFile(ConfigError):
    pass





def _open(path: str):
    """``path`` opened for reading without waiting for anyone; NotARegularFile
    when it is not a regular file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        _refuse(path, special_file(path))  # a socket cannot be opened at all
        raise
    try:
        _refuse(path, special_kind(os.fstat(descriptor).st_mode))
    except NotARegularFile:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def _refuse(path: str, kind: Optional[str]) -> None:
    if kind is not None:
        raise NotARegularFile(f"deduplication.state_file: {path} is {kind}, not a regular file. wqd reads its "
                              f"ledger of finished messages from that file at start and replaces it at stop: "
                              f"remove what is there, or name another path.")


def save(ledger, path: str) -> int:
    """Write the ledger's entries to ``path`` atomically; return how many."""
    entries = list(ledger.entries())
    body = b"".join(_ENTRY.pack(*entry) for entry in entries)
    content = _HEADER.pack(MAGIC, VERSION, _ENTRY.size, len(entries)) + body
    content += hashlib.blake2b(content, digest_size=_CHECKSUM_BYTES).digest()
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".wqd-finished-")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return len(entries)


def read(path: str):
    """The entries of the file at ``path``, oldest first; FileNotFoundError
    when there is none; BadFile or OSError when it cannot be used;
    NotARegularFile when it must not be used."""
    with _open(path) as stream:
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise BadFile(f"it is shorter ({len(header)} bytes) than the header")
        magic, version, entry_size, count = _HEADER.unpack(header)
        if magic != MAGIC:
            raise BadFile("it is not a wqd ledger file (wrong magic bytes)")
        if version != VERSION or entry_size != _ENTRY.size:
            raise BadFile(f"it is of format version {version} (entry size {entry_size}); "
                          f"this wqd reads version {VERSION}")
        if count > MAX_ENTRIES:
            raise BadFile(f"it claims {count} entries, more than the {MAX_ENTRIES} wqd ever writes")
        body = stream.read(count * _ENTRY.size + _CHECKSUM_BYTES + 1)
    if len(body) != count * _ENTRY.size + _CHECKSUM_BYTES:
        raise BadFile(f"its size does not match the {count} entries it claims (truncated, or extended)")
    checksum = hashlib.blake2b(header + body[:-_CHECKSUM_BYTES], digest_size=_CHECKSUM_BYTES).digest()
    if checksum != body[-_CHECKSUM_BYTES:]:
        raise BadFile("its checksum does not match its content")
    return _ENTRY.iter_unpack(body[:-_CHECKSUM_BYTES])


def load(ledger, path: str) -> None:
    """Fill the empty ledger from ``path``; log what happened, raise only
    NotARegularFile (a configuration error)."""
    try:
        entries = read(path)
    except FileNotFoundError:
        log.info("Duplicate suppression: no state file %s yet; starting with an empty ledger.", path)
        return
    except (OSError, BadFile) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("Duplicate suppression: cannot use the state file %s (%s); starting with an empty "
                    "ledger, so redeliveries of messages finished before this start will run again. The "
                    "file is replaced at the next stop.", path, reason)
        return
    ledger.fill(entries)
    log.info("Duplicate suppression: %d finished messages read from %s.", ledger.size, path)


def store(ledger, path: str) -> None:
    """Write the ledger to ``path`` at stop; a failure is logged, not raised."""
    try:
        count = save(ledger, path)
    except OSError as exc:
        log.warning("Duplicate suppression: cannot write the state file %s (%s); the next start begins with "
                    "an empty ledger.", path, exc.strerror or exc)
        return
    log.info("Duplicate suppression: %d finished messages written to %s.", count, path)
