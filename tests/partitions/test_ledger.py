"""The ledger's own checks can fail: a lost task is reported, and a duplicate
with no task in hand at the fault to explain it is an error."""

import pytest

from tests.partitions.ledger import Ledger, Run


def _ledger(*runs):
    ledger = Ledger(published={1, 2, 3})
    ledger.runs = sorted(runs, key=lambda run: run.start)
    return ledger


def test_a_task_without_a_completed_run_is_lost():
    ledger = _ledger(Run("h1", 1, 10, "default[1]", 0.0, 0.3), Run("h1", 2, 10, "default[1]", 0.3, None),
                     Run("h2", 3, 20, "default[1]", 0.0, 0.3))
    assert ledger.lost == {2}
    assert ledger.duplicate_count() == 0


def test_a_duplicate_is_explained_by_the_task_in_hand_at_the_fault():
    first = Run("h1", 1, 10, "default[1]", 9.8, 10.1)
    ledger = _ledger(first, Run("h2", 1, 20, "default[1]", 16.0, 16.3), Run("h1", 2, 10, "default[1]", 1.0, 1.3),
                     Run("h2", 3, 20, "default[1]", 2.0, 2.3))
    held = ledger.held_at(10.0, "h1")
    assert held == {1: first}
    assert ledger.rerun(1, first, 10.0).host == "h2"
    [line] = ledger.explain(held, "cut", 10.0)
    assert line.startswith("task 1: ran on h1 default[1] from -0.20 s to +0.10 s of the cut")


def test_a_duplicate_with_nothing_in_hand_to_explain_it_fails():
    ledger = _ledger(Run("h1", 1, 10, "default[1]", 1.0, 1.3), Run("h2", 1, 20, "default[1]", 16.0, 16.3),
                     Run("h1", 2, 10, "default[1]", 9.8, 10.1), Run("h2", 3, 20, "default[1]", 2.0, 2.3))
    with pytest.raises(AssertionError, match="task 1 ran twice but was not in hand"):
        ledger.explain(ledger.held_at(10.0, "h1"), "cut", 10.0)
