"""The quiet switch: one byte of memory the master shares with every worker.

SIGTSTP to the master turns it on, SIGCONT off; the master then signals its
workers, and each worker reads the switch when it wakes (on that signal, and
at least once a second). The switch, not the signal, says which: a worker
forked at any moment starts in the right state, and a signal lost in the
instant between a fork and the worker's signal mask, or a CONT overtaking a
TSTP, cannot leave a worker consuming while the master is quiet, or the other way.
"""

import mmap


class QuietSwitch:
    def __init__(self):
        self._map = mmap.mmap(-1, 1)  # anonymous and shared: every process forked after this sees it

    @property
    def on(self) -> bool:
        return self._map[0] == 1

    def set(self, on: bool) -> None:
        """Master side."""
        self._map[0] = 1 if on else 0
