"""The master's side of redelivery accounting (the worker's is accounting.py), kept whole: the ledger of
messages finished here (deduplication.py, with its state file) and the counts
of attempts lost with their worker (lost_attempts.py), and the workers'
questions about both. The master's loop calls ``collect`` on every pass, and
hands over what it learns of workers: spawned, reported, gone."""

import logging
import time

from wqd.redelivery import lost_attempts
from wqd.redelivery.deduplication import FinishedLedger

log = logging.getLogger("wqd.master")

# The worker reports this component answers (lost_attempts.py).
REPORTS = (lost_attempts.QUERY, lost_attempts.RETURNED, lost_attempts.CLEAR)


class MasterAccounts:
    def __init__(self, deduplication):
        """``deduplication``: the config's section (capacity, state_file); a
        reload does not change either."""
        self.finished = FinishedLedger(deduplication.capacity)
        self.lost = lost_attempts.MasterCounts(finished=self.finished.finished)
        self.state_file = deduplication.state_file

    def load(self, deduplicating: bool) -> None:
        """The ledger of finished messages as the last stop left it; raises
        ConfigError when the state file is not a regular file."""
        if self.state_file:
            self.finished.load(self.state_file)
        elif deduplicating:
            log.info("Duplicate suppression: no deduplication.state_file (and no $STATE_DIRECTORY), so the "
                     "ledger of finished messages is not kept across restarts.")

    def store(self) -> None:
        if self.state_file:
            self.finished.store(self.state_file)

    def next_look(self, timeout: float) -> float:
        """The loop's wait, shortened while answers are held."""
        return min(timeout, lost_attempts.QUERY_RECHECK) if self.lost.queries_waiting else timeout

    def collect(self, workers) -> None:
        """Every pass of the loop: drain the workers' rings, then answer their questions."""
        self.finished.collect()
        self.lost.answer_queries(workers, time.monotonic())

    def spawned(self, pid: int, ring, queue: str) -> None:
        if ring is not None:
            self.finished.watch(pid, ring, queue)

    def report(self, proc, event: str, fields: dict, workers) -> None:
        """One of REPORTS from worker ``proc``."""
        if event == lost_attempts.QUERY:
            self.lost.query(proc, fields["key"], time.monotonic(), fields.get("finished"))
        elif event == lost_attempts.RETURNED:
            self.lost.count_lost(fields["key"], workers)
        elif event == lost_attempts.CLEAR:
            self.lost.clear(fields["key"], workers)

    def worker_gone(self, pid: int, final, workers) -> None:
        """A reaped worker: ``final``, its record's last snapshot; a task it was
        running counts as an attempt lost with it."""
        self.finished.worker_gone(pid, final)
        if final.busy_since is not None:
            self.lost.count_lost(final.message_key, workers)

    def counts(self) -> dict:
        """What a new worker starts from."""
        return self.lost.counts()

    def close_in_child(self) -> None:
        self.finished.close_in_child()
