"""Autoscaling's rules and the `workers` key, as pure logic (the daemon's
behaviour against a broker is in test_quiet_autoscale.py)."""

import pytest

from wqd import config
from wqd.master.autoscaling import Activity, idle_to_retire, should_grow
from wqd.master.supervision import Pool

AUTOSCALED = config.WorkerBounds(min=1, max=4, idle_timeout=30)


class Worker:
    """The parts of a WorkerProcess the rules read."""

    def __init__(self, slot, now=0.0):
        self.slot = slot
        self.activity = Activity(now)


def pool_config(workers):
    return config.PoolConfig("p", "q", "m:f", workers=workers, dead_letter_queue="q.dead")


def parse_workers(text):
    return config.parse(f"pools: [{{name: a, queue: q, handler: 'm:f', workers: {text}}}]\n", "wqd.yaml") \
        .pools[0].workers


# -- the workers key --

def test_a_number_is_a_fixed_pool_and_a_mapping_a_range():
    assert parse_workers("3") == config.WorkerBounds(3, 3) and not parse_workers("3").autoscaled
    assert parse_workers("{min: 1, max: 8}") == config.WorkerBounds(1, 8, 30.0)
    assert parse_workers("{min: 2, max: 5, idle_timeout: 4.5}") == config.WorkerBounds(2, 5, 4.5)
    assert parse_workers("{min: 2, max: 2}").autoscaled is False
    assert str(parse_workers("{min: 1, max: 8}")) == "1..8" and str(parse_workers("3")) == "3"


@pytest.mark.parametrize("text, expected", [
    ("{min: 3, max: 1}", "pools[0].workers: expected min <= max"),
    ("{min: 1}", "pools[0].workers: max is required in {min, max, idle_timeout}"),
    ("{min: 0, max: 2}", "pools[0].workers: min: expected a positive integer"),
    ("{min: 1, max: 2, idle_timeout: 0}", "pools[0].workers: idle_timeout: expected a positive number of seconds"),
    ("{min: 1, max: 2, idle: 5}", "pools[0].workers: unknown key 'idle' in {min, max, idle_timeout}"),
    ("{min: true, max: 2}", "pools[0].workers: min: expected a positive integer"),
])
def test_a_bad_range_is_a_configuration_error_naming_the_key(text, expected):
    with pytest.raises(config.ConfigError) as error:
        parse_workers(text)
    assert expected in str(error.value)


def test_a_change_of_bounds_is_a_scale_not_a_replace():
    assert pool_config(config.WorkerBounds(2, 2)).same_settings(pool_config(AUTOSCALED))


# -- slots: TTIN/TTOU, reloads, retiring --

def test_ttin_and_ttou_stay_within_the_bounds_of_an_autoscaled_pool():
    pool = Pool(pool_config(config.WorkerBounds(2, 3)), handler=None)
    assert pool.slots == {1, 2}
    pool.step(more=False)
    assert pool.slots == {1, 2}, "never below min"
    pool.step(more=True)
    pool.step(more=True)
    assert pool.slots == {1, 2, 3}, "never above max"


def test_ttou_keeps_a_fixed_pool_at_one_worker_at_least_and_ttin_has_no_ceiling():
    pool = Pool(pool_config(config.WorkerBounds(1, 1)), handler=None)
    pool.step(more=False)
    assert pool.slots == {1}
    pool.step(more=True)
    pool.step(more=True)
    assert pool.slots == {1, 2, 3}


def test_scaling_fills_the_lowest_free_slots_and_drops_the_highest():
    pool = Pool(pool_config(config.WorkerBounds(1, 6)), handler=None)
    pool.scale_to(4)
    pool.slots.discard(2)  # the autoscaler retired default[2]
    pool.scale_to(4)
    assert pool.slots == {1, 2, 3, 4}
    pool.slots.discard(3)
    pool.scale_to(2)
    assert pool.slots == {1, 2}


def test_a_reload_keeps_an_autoscaled_count_within_the_new_bounds_and_sets_a_fixed_one():
    pool = Pool(pool_config(config.WorkerBounds(1, 8)), handler=None)
    pool.scale_to(5)
    pool.reconfigure(pool_config(config.WorkerBounds(1, 10)))
    assert pool.desired == 5
    pool.reconfigure(pool_config(config.WorkerBounds(1, 3)))
    assert pool.desired == 3
    pool.reconfigure(pool_config(config.WorkerBounds(6, 9)))
    assert pool.desired == 6
    pool.reconfigure(pool_config(config.WorkerBounds(2, 2)))
    assert pool.slots == {1, 2}


# -- the rules --

def test_activity_counts_a_task_finished_between_looks_as_work():
    activity = Activity(now=0.0)
    activity.look(busy=False, finished=0, now=1.0)
    assert not activity.worked and activity.idle_for(5.0) == 5.0, "idle since its start"
    activity.look(busy=False, finished=3, now=6.0)
    assert activity.worked and activity.idle_for(6.5) == 0.5, "tasks finished meanwhile: idle from this look"
    activity.look(busy=True, finished=3, now=7.0)
    assert activity.worked and activity.idle_for(100.0) == 0.0, "busy: not idle at all"
    activity.look(busy=False, finished=4, now=8.0)
    activity.look(busy=False, finished=4, now=9.0)
    assert not activity.worked and activity.idle_for(10.0) == 2.0


def _worked(*slots):
    workers = [Worker(slot) for slot in slots]
    for worker in workers:
        worker.activity.look(busy=True, finished=0, now=1.0)
    return workers


def test_it_grows_only_while_messages_wait_and_every_worker_worked_up_to_max():
    assert should_grow(AUTOSCALED, 2, _worked(1, 2), messages_ready=5)
    assert not should_grow(AUTOSCALED, 2, _worked(1, 2), messages_ready=0)
    assert not should_grow(AUTOSCALED, 2, _worked(1, 2), messages_ready=None), "unknown depth: no growth"
    assert not should_grow(AUTOSCALED, 4, _worked(1, 2, 3, 4), messages_ready=5), "at max"
    idle = _worked(1) + [Worker(2)]
    assert not should_grow(AUTOSCALED, 2, idle, messages_ready=5), "a worker did nothing"
    assert not should_grow(AUTOSCALED, 3, _worked(1, 2), messages_ready=5), "a worker not started yet"
    assert not should_grow(config.WorkerBounds(2, 2), 2, _worked(1, 2), messages_ready=5), "a fixed pool"


def test_it_retires_workers_idle_for_idle_timeout_highest_slot_first_down_to_min():
    workers = [Worker(slot) for slot in (1, 2, 3, 4)]
    workers[1].activity.look(busy=True, finished=0, now=10.0)  # slot 2 is busy
    assert idle_to_retire(AUTOSCALED, 4, workers, now=29.0) == []
    retired = idle_to_retire(AUTOSCALED, 4, workers, now=30.0)
    assert [worker.slot for worker in retired] == [4, 3, 1], "every idle one; never the busy one"
    assert [w.slot for w in idle_to_retire(config.WorkerBounds(2, 4, 30), 4, workers, now=30.0)] == [4, 3]
    assert idle_to_retire(config.WorkerBounds(4, 4), 4, workers, now=100.0) == [], "a fixed pool"
