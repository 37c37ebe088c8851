"""Replaying and purging dead letters as `wqd dead replay | purge` and the
console do them, with one wording for their lines, counts and errors."""

import dataclasses
import time
from typing import Callable, Optional

from wqd import errors
from wqd.broker.dead_letters import printable, quoted


@dataclasses.dataclass
class Replayed:
    count: int = 0
    refused: list = dataclasses.field(default_factory=list)  # (dead-letter queue, Refusal)
    missing: list = dataclasses.field(default_factory=list)  # the ids given that named no letter read

    def error(self, pools, limit: Optional[int] = None) -> Optional[errors.WqdError]:
        """Why the replay was incomplete, or None: a copy the broker refused
        (exit 69 when it nacked one, as `wqd publish`; else 1, as a missing
        work queue), or an id not found (unless a limit stopped the reading)."""
        if self.refused:
            nacked = sum(1 for _, refusal in self.refused if refusal.nacked)
            kinds = ", ".join(f"{n} {kind}" for n, kind in ((nacked, "nacked"),
                                                            (len(self.refused) - nacked, "returned")) if n)
            queues = ", ".join(dict.fromkeys(queue for queue, _ in self.refused))
            were, are = ("was", "is") if len(self.refused) == 1 else ("were", "are")
            error = errors.BrokerUnavailable if nacked else errors.WqdError
            return error(f"replayed {self.count} of {self.count + len(self.refused)} messages; "
                         f"{len(self.refused)} {were} refused by the broker ({kinds}: see the lines above) and {are} "
                         f"still in {queues}")
        if self.missing and (limit is None or self.count < limit):
            return errors.WqdError(f"replayed {messages(self.count)}; not found in "
                                   f"{', '.join(p.dead_letter_queue for p in pools)}: "
                                   f"{', '.join(quoted(wanted) for wanted in self.missing)}")
        return None


def replay(queues, pools, ids: list, exceptions: list, limit: Optional[int], say: Callable[[str], None]) -> Replayed:
    """Replay the letters ``ids`` and ``exceptions`` select (each given id, or
    the start of one, names a letter; ``limit``: at most so many), one line
    to ``say`` per letter."""
    named, result = set(), Replayed()

    def select(letter) -> bool:
        named.update(wanted for wanted in ids if letter.named(wanted))
        return letter.matches(ids, exceptions)

    for pool in pools:
        left = None if limit is None else limit - result.count
        for letter, refusal in queues.replay(pool, select, left):
            if refusal is None:
                result.count += 1
                say(printable(f"Replayed {letter.id} ({letter.exception}) to {pool.queue}"))
            else:
                result.refused.append((letter.queue, refusal))
                say(printable(f"Not replayed {letter.id} ({letter.exception}): {refusal.reason}; it is "
                              f"still in {pool.dead_letter_queue}"))
    result.missing = [wanted for wanted in ids if wanted not in named]
    return result


def purge(queues, pools, older_than: Optional[float]) -> int:
    """Delete the letters that failed more than ``older_than`` seconds ago (None: all); return how many."""
    now = time.time()

    def old_enough(letter) -> bool:
        if older_than is None:
            return True
        age = letter.age(now)
        return age is not None and age > older_than

    return sum(1 for pool in pools for _ in queues.delete(pool, old_enough))


def messages(count: int) -> str:
    return f"{count} message{'' if count == 1 else 's'}"


def purged(count: int) -> str:
    """What a purge of ``count`` letters says."""
    return f"Deleted {count} dead message{'' if count == 1 else 's'}."
