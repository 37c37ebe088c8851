"""What a finished task adds to the counts: its outcome and its duration's bucket.

A module of its own so that the worker's shared-memory record (which stores
the counts) and the metrics (which expose them) share one definition without
either depending on the other.
"""

import enum


class Outcome(str, enum.Enum):
    """How a task ended; the value is the ``outcome`` label of ``wqd_tasks_total``.

    A str mixin: its members hash as their values (in C, so the record's
    per-task lookup stays cheap) and equal them ("failed" == Outcome.FAILED).
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # dropped (no dead-letter queue), or left to the broker (worker or connection lost)
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"  # a redelivery of a message already finished here, acked without running


# Upper bounds (seconds) of the handler run-time histogram; +Inf is implied.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
