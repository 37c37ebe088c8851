"""A reload's loading, done where a stall cannot stop supervision.

Parsing the YAML and importing handler modules run code whose cost the master
cannot bound (an alias bomb, a module that sleeps or allocates at import). So
on SIGHUP a short-lived child does both, within RELOAD_TIMEOUT seconds and
RELOAD_MEMORY_BYTES of memory more than the master's, and sends the validated
Config back (pickled: it is our own child); the master keeps supervising
meanwhile, and applies the result without importing anything. The workers of
a new or changed pool import their handler after the fork
(worker/main.py); a failure there parks the pool, as any
configuration error reported by a worker does.
"""

import logging
import os
import pickle
import resource
import signal
import sys
import time

from setproctitle import setproctitle

from wqd import config as config_module
from wqd import errors, exits, logs
from wqd.errors import bounded
from wqd.handlers import code_version
from wqd.handlers import loading as handlers_module
from wqd.master import children
from wqd.master.supervision import Pool

log = logging.getLogger("wqd.master")

# The longest a reload may take to load and check the file and import its
# handlers; past it the child is killed and the running configuration kept.
RELOAD_TIMEOUT = 30.0
# Memory the loading child may use beyond what it inherits from the master
# (its data segment: heap and anonymous mappings, not the shared libraries).
RELOAD_MEMORY_BYTES = 1024 * 1024 * 1024
# The pickled result the master accepts from the child.
MAX_RESULT_BYTES = 16 * 1024 * 1024


class Reload:
    """One reload in progress: the child loading the file, the pipe it answers on."""

    def __init__(self, path: str, close_inherited, preloaded: tuple):
        """``close_inherited()`` runs in the child to close what it inherited
        from the master; ``preloaded``: the handler modules the master
        imported, forgotten in the child so that it checks the code on disk."""
        self.path = path
        self.pid, read_fd, _ = children.fork_with_pipes(
            lambda report_fd, _: _load_and_send(path, report_fd, preloaded),
            "The reload's loading process", close_inherited)
        self._fd = read_fd
        self._data = bytearray()
        self._too_big = False
        self.deadline = time.monotonic() + RELOAD_TIMEOUT
        self._timed_out = False
        self.cancelled = False

    def fileno(self):
        """The pipe to select() on for reading; None once the child closed it."""
        return self._fd

    def read(self) -> None:
        """Take what the child sent so far (the pipe is non-blocking)."""
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not chunk:  # all sent; closed now, or the loop would wake for it until the reaping
                self.close_in_child()
                return
            if len(self._data) + len(chunk) > MAX_RESULT_BYTES:
                self._too_big = True
                self.kill()
                self.close_in_child()
                return
            self._data += chunk

    def check_deadline(self, now: float) -> None:
        """Kill the child once it has run past RELOAD_TIMEOUT (it is reaped as usual)."""
        if now > self.deadline and not self._timed_out:
            self._timed_out = True
            self.kill()

    def cancel(self) -> None:
        """The master stops: the result no longer matters."""
        self.cancelled = True
        self.kill()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def ended(self, status: int):
        """The child was reaped with wait ``status``: ((new Config, its
        code_version.CodeVersion), None) or (None, why not)."""
        self.read()
        self.close_in_child()
        if self._timed_out:
            return None, (f"loading {self.path} did not finish within {RELOAD_TIMEOUT:.0f} s "
                          "(a handler module slow to import, or a file too costly to parse)")
        if self._too_big:
            return None, f"loading {self.path} sent back more than {MAX_RESULT_BYTES} bytes"
        try:
            loaded, error = pickle.loads(bytes(self._data))
        except Exception:  # nothing, or a truncated result: the child died before it was done
            return None, f"the process loading {self.path} {exits.describe(status)} before it was done"
        return loaded, error

    def close_in_child(self) -> None:
        """Let go of the pipe: in the master once read, and in any process it forks."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """The master exits: the child must not outlive it."""
        self.cancel()
        self.close_in_child()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass



def _load_and_send(path: str, write_fd: int, preloaded: tuple) -> int:
    """In the child: load and check the file, import its handlers from disk,
    send ((config, code version), error)."""
    setproctitle(f"wqd: reload -c {path}")
    logs.set_process_name("reload")
    out_of_memory = (f"loading {path} needed more than {RELOAD_MEMORY_BYTES // (1024 * 1024)} MiB "
                     "of memory beyond the master's")
    _limit_memory(RELOAD_MEMORY_BYTES)
    loaded, error = None, None
    try:
        config = config_module.load(path)
        code_version.forget(preloaded)
        before = set(sys.modules)
        handlers_module.load_all(config)
        loaded = (config, code_version.imported_since(before))
    except errors.ConfigError as exc:
        loaded, error = None, str(exc)
    except MemoryError:
        loaded, error = None, out_of_memory  # built before: this must not allocate much
    except BaseException as exc:  # SystemExit from a handler module's import, say
        loaded, error = None, f"loading {path} failed: {type(exc).__name__}: {exc}"
    result = pickle.dumps((loaded, None if error is None else bounded(error)))
    with os.fdopen(write_fd, "wb") as stream:
        stream.write(result)
    return 0


def _limit_memory(extra: int) -> None:
    """Cap the data segment at its current size plus ``extra`` bytes."""
    try:
        with open("/proc/self/status") as status:
            data_kib = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        return  # no /proc: the time limit still bounds the child
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_kib * 1024 + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def switch_pools(pools: list, new_config, replace_all: bool, code_changed: bool):
    """The pools of a reloaded configuration, from the running ones: a pool
    whose settings are unchanged is kept (its workers too); a changed one is
    new and its old one retired; with new handler code (``code_changed``) a
    pool rolls onto it one worker slot at a time. ``replace_all`` (broker or
    tracing changed) replaces every pool. Returns (pools, the old pools whose
    workers retire now)."""
    current = {pool.config.name: pool for pool in pools}
    switched, retired = [], []
    for pool_config in new_config.pools:
        old = current.pop(pool_config.name, None)
        if old and not (replace_all or code_changed) and old.config.same_settings(pool_config) and not old.failed:
            old.reconfigure(pool_config)
            switched.append(old)
            continue
        new_pool = Pool(pool_config, handler=None)
        if old and code_changed and not replace_all and not old.failed:
            log.info("Pool %r: rolling its workers onto the new code, one slot at a time.", pool_config.name)
            new_pool.replacing = old.replacing or old  # a deploy during a deploy rolls from the first
        elif old:
            log.info("Pool %r changed; replacing its workers gracefully.", pool_config.name)
            retired.append(old)
        else:
            log.info("Pool %r added.", pool_config.name)
        switched.append(new_pool)
    for old in current.values():
        log.info("Pool %r removed; stopping its workers gracefully.", old.config.name)
        retired.append(old)
    return switched, retired


def what_changed(old, new, running_fingerprint: str, code) -> tuple:
    """(replace every pool, the handler code changed) for a reload from
    config ``old`` to ``new`` with ``code`` (code_version.CodeVersion) loaded;
    logs what takes effect only at a restart."""
    if new.metrics != old.metrics:
        log.warning("metrics.listen changed; it takes effect at the next restart.")
    if new.deduplication != old.deduplication:
        log.warning("The deduplication section changed; it takes effect at the next restart.")
    code_changed = code.fingerprint != running_fingerprint
    if code_changed:
        log.info("The handler code changed; replacing every worker gracefully (in-flight tasks finish on "
                 "the old code, new workers run the new).")
    # A worker takes the broker and tracing settings at its start: a change of either replaces every worker.
    return new.broker != old.broker or new.tracing != old.tracing, code_changed
