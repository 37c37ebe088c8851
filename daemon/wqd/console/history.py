"""Task rates over the last hour, kept in the master's memory for the console's charts.

The master's loop hands it the task totals (cumulative counts per pool and
outcome) at most every SAMPLE_INTERVAL seconds; it keeps a bounded ring of
them (WINDOW / SAMPLE_INTERVAL + 1 samples, whatever the uptime), and a rate
is the difference of two neighbouring samples, per minute. A count that went
down (a pool replaced by a reload starts again) reads as no tasks.
"""

import collections

SAMPLE_INTERVAL = 10.0
WINDOW = 3600.0
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered")


class RateHistory:
    def __init__(self, interval: float = SAMPLE_INTERVAL, window: float = WINDOW):
        self.interval = interval
        self._samples = collections.deque(maxlen=int(window / interval) + 1)  # (monotonic time, {pool: counts})

    def due(self, now: float) -> bool:
        return not self._samples or now - self._samples[-1][0] >= self.interval

    def sample(self, now: float, totals: dict) -> None:
        """``totals``: pool -> {outcome: count since the start}."""
        self._samples.append((now, {pool: tuple(int(counts.get(name, 0)) for name in OUTCOMES)
                                    for pool, counts in totals.items()}))

    def rates(self, pool: str) -> dict:
        """outcome -> [tasks per minute in each sample interval, oldest first]."""
        series = {name: [] for name in OUTCOMES}
        samples = list(self._samples)
        for (then, before), (now, after) in zip(samples, samples[1:]):
            old, new = before.get(pool), after.get(pool)
            if old is None or new is None or now <= then:
                continue
            for index, name in enumerate(OUTCOMES):
                series[name].append(max(0, new[index] - old[index]) * 60.0 / (now - then))
        return series

    def __len__(self) -> int:
        return len(self._samples)
