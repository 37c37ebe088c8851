"""The master process: forks workers, keeps their number, stops and reloads.

Signal handlers only record the signal and wake the loop through the wakeup
fd; the loop acts: signals, worker reports, reaping, time limits, autoscaling,
the worker count, notifications. The master holds no broker connection.
"""

import errno
import json
import logging
import os
import selectors
import signal
import time

from setproctitle import setproctitle

from wqd import autoscaling, children, errors, logs, lost_attempts, reloading, reporting, worker
from wqd.console.app import Console
from wqd.deduplication import FinishedLedger, FinishedRing
from wqd.http_endpoint import HTTPEndpoint
from wqd.metrics import Metrics
from wqd.queue_monitor import QueueMonitor
from wqd.quiet import QuietSwitch
from wqd.stalls import StallWatch, kill_after
from wqd.supervision import (
    EARLY_DEATH_SECONDS,
    RECYCLED,
    Connection,
    Pool,
    WorkerProcess,
    classify_exit,
    describe_status,
    explain_exit,
    may_be_out_of_memory,
)
from wqd.systemd import Notifier
from wqd.task_stats import Outcome
from wqd.worker_record import SETTLE_TIMEOUT, WorkerRecord

log = logging.getLogger("wqd.master")

# Longest the loop sleeps when nothing happens (it wakes on signals and reports).
LOOP_TIMEOUT = 1.0
# After a fast stop, workers get this long to exit on SIGQUIT before SIGKILL.
FAST_STOP_TIMEOUT = 2.0
# While workers drain during a stop, the loop keeps asking systemd for this much
# more time (EXTEND_TIMEOUT_USEC), so a graceful_timeout longer than the unit's
# TimeoutStopSec is honoured, and a master that hangs is still killed.
STOP_EXTEND_SECONDS = 10.0

HANDLED_SIGNALS = ("HUP", "INT", "QUIT", "TERM", "TTIN", "TTOU", "TSTP", "CONT", "CHLD")


class Master:
    def __init__(self, config, handlers, code):
        """``code``: the code_version.CodeVersion the handlers were imported from."""
        self.config = config
        self.pools = [Pool(pool, handlers[pool.name]) for pool in config.pools]
        # The handler modules this process imported (its forks forget them to
        # import the code on disk), and the version of the code deployed.
        self.preloaded = code.modules
        self.code_fingerprint = code.fingerprint
        self.workers = {}  # pid -> WorkerProcess
        # Attempts that ended with their worker, per message (classic queues
        # have no delivery counter), and the workers' queries about them.
        # Messages finished here, fed by the workers, for duplicate suppression.
        self.finished = FinishedLedger(config.deduplication.capacity)
        self.lost_attempts = lost_attempts.MasterLedger(finished=self.finished.finished)
        self.state_file = config.deduplication.state_file  # where the ledger is kept; a reload does not move it
        self.signals = []
        self.stopping = False
        self.fast_stop = False
        self.quiet = QuietSwitch()  # TSTP turns it on, CONT off; every worker reads it
        self.stalls = StallWatch(config.broker.heartbeat)  # workers that stopped running
        self.autoscaled_at = 0.0  # monotonic time of the autoscaler's last look
        self.config_error = None  # why every pool failed: run() raises it once stopped
        self.was_ready = False
        self.notifier = Notifier()
        self.last_watchdog = 0.0
        self.last_stop_extend = 0.0
        self.last_status_line = ""
        self.metrics = Metrics(self._snapshot, self._live_records)
        for pool in self.pools:
            self.metrics.add_pool(pool.config.name)
        # Queue depth, polled by a child process: the master never waits on the broker.
        self.queue_monitor = QueueMonitor(config.broker, config.pools)
        self.metrics.registry.register(self.queue_monitor)
        self.http = None
        self.console = None  # the operator's console at / of metrics.listen (console/app.py)
        self.reload = None  # the reload in progress (reloading.Reload), if any
        self.reload_again = False  # a SIGHUP came during it: one more reload follows it
        self.pid = os.getpid()

    # -- start and main loop --

    def run(self) -> None:
        """Run until stopped; raises errors.ConfigError when every pool had a
        configuration error, or the state file is not a regular file."""
        self._load_finished()  # first: a state file that is not a regular file stops the start here
        setproctitle(f"wqd: master -c {self.config.path}")
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w)
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, "SIG" + name), self._record_signal)
        if self.config.metrics.listen and self.config.console.enabled:
            self.console = Console(self, self._set_quiet)
        if self.config.metrics.listen:
            self.http = HTTPEndpoint(self.config.metrics.listen, {
                "/metrics": lambda: (200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.exposition()),
                "/healthz": lambda: (200, "text/plain", b"ok\n"),
                "/readyz": self._readyz,
                "/status": lambda: (200, "application/json", json.dumps(self.status()).encode()),
            }, app=self.console.handle if self.console else None)
            log.info("Serving metrics on http://%s/metrics.", self.http.address)
        log.info("wqd master started (pid %d) with %s; pools: %s.", self.pid, self.config.path,
                 ", ".join(f"{p.config.name}={p.desired}" for p in self.pools))
        while True:
            self._manage()
            if self.stopping and not self.workers:
                break
            self._notify()
            self._wait()
        log.info("All workers are gone; master exits.")
        if self.state_file:
            self.finished.store(self.state_file)
        if self.reload:
            self.reload.close()
        self.queue_monitor.close()
        if self.console:
            self.console.close()
        if self.http:
            self.http.close()
        if self.config_error:
            raise errors.ConfigError(self.config_error)

    def _load_finished(self) -> None:
        """The ledger of finished messages as the last stop left it."""
        if self.state_file:
            self.finished.load(self.state_file)
        elif any(pool.config.deduplicate for pool in self.pools):
            log.info("Duplicate suppression: no deduplication.state_file (and no $STATE_DIRECTORY), so the "
                     "ledger of finished messages is not kept across restarts.")

    def _record_signal(self, signum, frame) -> None:
        """NO logging, no work: just queue the signal; the loop acts on it."""
        self.signals.append(signum)

    def _wait(self) -> None:
        """Sleep until a signal, a worker report, an HTTP client or the next deadline."""
        now = time.monotonic()
        timeout = LOOP_TIMEOUT
        starts = [when for when in (pool.respawn.next_start(now) for pool in self.pools) if when is not None]
        if starts:
            timeout = max(0.0, min(timeout, min(starts) - now))
        if self.reload:  # wake to kill the loading child at its deadline
            timeout = max(0.0, min(timeout, self.reload.deadline - now))
        if self.notifier.watchdog_interval:  # wake for the ping: a late one can cost a SIGABRT
            next_ping = self.last_watchdog + self.notifier.watchdog_interval
            timeout = max(0.0, min(timeout, next_ping - time.monotonic()))
        if any(pool.config.workers.autoscaled for pool in self.pools):
            timeout = max(0.0, min(timeout, self.autoscaled_at + autoscaling.STEP_INTERVAL - now))
        if self.lost_attempts.queries_waiting:  # held answers: look again soon
            timeout = min(timeout, lost_attempts.QUERY_RECHECK)
        if self.signals:
            timeout = 0
        # A selector made for this wait (epoll on Linux): no FD_SETSIZE ceiling
        # on the number of workers, and nothing to keep in step as pipes come and go.
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_r, selectors.EVENT_READ, lambda: _drain(self._wakeup_r))
            for proc in self.workers.values():
                selector.register(proc.reader.fd, selectors.EVENT_READ, lambda proc=proc: self._read_reports(proc))
            if self.http:
                for fd, events, callback in self.http.watched():
                    selector.register(fd, events, callback)
            if self.queue_monitor.fileno() is not None:
                selector.register(self.queue_monitor.fileno(), selectors.EVENT_READ, self.queue_monitor.read)
            if self.reload and self.reload.fileno() is not None:
                selector.register(self.reload.fileno(), selectors.EVENT_READ, self.reload.read)
            for fd, callback in self.console.watched() if self.console else ():
                selector.register(fd, selectors.EVENT_READ, callback)
            for key, _ in selector.select(timeout):
                key.data()

    def _manage(self) -> None:
        """One pass of the loop's duties, in order."""
        while self.signals:
            self._handle_signal(self.signals.pop(0))
        self._reap()
        self.finished.collect()
        self._answer_lost_queries()
        now = time.monotonic()
        if self.reload:
            self.reload.check_deadline(now)
        if self.http:
            self.http.drop_late_clients(now)
        if self.console:
            self.console.tick(now, self._close_master_fds)
        for proc in list(self.workers.values()):
            if proc.must_be_killed(now):
                log.warning("Worker %s (pid %d) did not stop in time; killing it.", proc.name, proc.pid)
                self._kill(proc, signal.SIGKILL)
        if self.stopping:
            return
        self._enforce_time_limits(now)
        for proc in self.stalls.look(now, self.workers.values()):
            self._kill(proc, signal.SIGKILL)
        self._autoscale(now)
        self._keep_worker_count(now)
        self.queue_monitor.tick(now, self._close_master_fds)
        if self.pools and all(pool.failed for pool in self.pools):
            log.error("Every pool has a configuration error; stopping.")
            # Each error names its pool: together, one paragraph for cli.py to show.
            self.config_error = " ".join(["Every pool has a configuration error, so wqd stopped."]
                                         + [pool.failed for pool in self.pools])
            self._begin_stop(graceful=True)

    # -- signals --

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if name == "SIGCHLD":
            return  # reaped on every pass anyway
        if name in ("SIGTERM", "SIGINT"):
            self._begin_stop(graceful=not self.stopping)
        elif name == "SIGQUIT":
            self._begin_stop(graceful=False)
        elif name == "SIGHUP":
            if not self.stopping:
                self._request_reload()
        elif name in ("SIGTTIN", "SIGTTOU") and not self.stopping:
            for pool in self.pools:
                pool.step(more=name == "SIGTTIN")
            log.info("%s: workers per pool now %s.", name,
                     ", ".join(f"{p.config.name}={p.desired}" for p in self.pools))
        elif name in ("SIGTSTP", "SIGCONT") and not self.stopping:
            self._set_quiet(name == "SIGTSTP")

    def _set_quiet(self, quiet: bool) -> None:
        """TSTP: every worker finishes its task and cancels its consumer, and
        stays up and connected; CONT: they consume again. Workers forked
        meanwhile (respawns, scaling) start as the switch says."""
        if quiet == self.quiet.on:
            return  # e.g. the CONT that follows any SIGSTOP
        self.quiet.set(quiet)
        if quiet:
            log.info("Quiet (SIGTSTP): workers finish their current task and stop consuming; they stay up. "
                     "SIGCONT resumes.")
        else:
            log.info("Resuming (SIGCONT): workers consume again.")
        for proc in self.workers.values():
            self._kill(proc, signal.SIGTSTP if quiet else signal.SIGCONT)  # wakes it to read the switch

    def _begin_stop(self, graceful: bool) -> None:
        if graceful:
            timeout = self.config.shutdown.graceful_timeout
            log.info("Graceful stop: workers finish their current task (up to %.0f s).", timeout)
            self.notifier.notify("STOPPING=1", "STATUS=Stopping: workers finish their current task")
            self.stopping = True
            self.queue_monitor.stop()
            if self.reload:
                self.reload.cancel()
            for proc in self.workers.values():
                self._retire(proc, timeout)
        elif not self.fast_stop:
            log.info("Fast stop: workers exit now; their unacked messages return to the queue.")
            self.notifier.notify("STOPPING=1", "STATUS=Stopping fast")
            self.stopping = self.fast_stop = True
            self.queue_monitor.stop()
            if self.reload:
                self.reload.cancel()
            for proc in self.workers.values():
                proc.retire(time.monotonic() + FAST_STOP_TIMEOUT)
                self._kill(proc, signal.SIGQUIT)

    # -- reload --

    def _request_reload(self) -> None:
        """Start loading the file in a child; a SIGHUP during a reload is
        merged into one more reload after it (the file may have changed since
        the child read it)."""
        if self.reload is not None:
            self.reload_again = True
            log.info("SIGHUP during the reload in progress: one more reload follows it.")
            return
        self.notifier.reloading()
        self.reload = reloading.Reload(self.config.path, self._close_master_fds, self.preloaded)
        log.info("Reloading %s: loading it in a child process (pid %d), for up to %.0f s.",
                 self.config.path, self.reload.pid, reloading.RELOAD_TIMEOUT)

    def _reload_ended(self, status: int) -> None:
        """The loading child was reaped: apply its result, or keep the running configuration."""
        reload, self.reload = self.reload, None
        if reload.cancelled:
            return
        loaded, error = reload.ended(status)
        if error is not None:
            log.error("Reload failed; keeping the running configuration. %s", reloading.bounded(error))
            self.notifier.notify("READY=1", "STATUS=Reload failed; running the previous configuration")
        else:
            self._apply(*loaded)
        if self.reload_again and not self.stopping:
            self.reload_again = False
            self._request_reload()

    def _apply(self, new_config, code) -> None:
        """Switch to a configuration loaded and checked by the reload's child,
        and to the handler code it imported. The master imports no handler
        here: the workers of new or changed pools do (all of them, when the code changed)."""
        logs.setup(new_config.logging.level, new_config.logging.format)
        if new_config.metrics != self.config.metrics:
            log.warning("metrics.listen changed; it takes effect at the next restart.")
        if new_config.deduplication != self.config.deduplication:
            log.warning("The deduplication section changed; it takes effect at the next restart.")
        # A worker takes the broker and tracing settings at its start: a change of either replaces every worker.
        broker_changed = new_config.broker != self.config.broker or new_config.tracing != self.config.tracing
        code_changed = code.fingerprint != self.code_fingerprint
        if code_changed:
            log.info("The handler code changed; replacing every worker gracefully (in-flight tasks finish on "
                     "the old code, new workers run the new).")
            self.code_fingerprint = code.fingerprint
        current = {pool.config.name: pool for pool in self.pools}
        pools = []
        for pool_config in new_config.pools:
            old = current.pop(pool_config.name, None)
            if old and not (broker_changed or code_changed) and old.config.same_settings(pool_config) \
                    and not old.failed:
                old.reconfigure(pool_config)
                pools.append(old)
                continue
            new_pool = Pool(pool_config, handler=None)
            if old and code_changed and not broker_changed and not old.failed:
                log.info("Pool %r: rolling its workers onto the new code, one slot at a time.", pool_config.name)
                new_pool.replacing = old.replacing or old  # a deploy during a deploy rolls from the first
            elif old:
                log.info("Pool %r changed; replacing its workers gracefully.", pool_config.name)
                self._retire_pool(old)
            else:
                log.info("Pool %r added.", pool_config.name)
            pools.append(new_pool)
            self.metrics.add_pool(pool_config.name)
        for old in current.values():
            log.info("Pool %r removed; stopping its workers gracefully.", old.config.name)
            self._retire_pool(old)
        self.pools = pools
        self.config = new_config
        self.queue_monitor.configure(new_config.broker, new_config.pools)
        if self.console:
            self.console.configure(new_config)
        self.stalls.kill_after = kill_after(new_config.broker.heartbeat)
        self.was_ready = False  # READY=1 again once every pool consumes
        log.info("Reloaded %s; pools: %s.", self.config.path,
                 ", ".join(f"{p.config.name}={p.desired}" for p in self.pools))

    def _rolled(self, proc) -> None:
        """A new worker of a rolling pool consumes: the old worker of its slot
        retires (finishing its task on the old code); after the last slot, so
        do the old pool's workers of slots the new one no longer has."""
        pool = proc.pool
        rolled = {p.slot for p in self.workers.values()
                  if p.pool is pool and p.seen_connection is Connection.CONSUMING}
        done = pool.slots <= rolled
        for old in list(self.workers.values()):
            if old.pool is pool.replacing and not old.retiring and (old.slot == proc.slot or done):
                self._retire(old, self.config.shutdown.graceful_timeout)
        if done:
            log.info("Pool %r runs the new code on every worker.", pool.config.name)
            pool.replacing = None

    def _retire_pool(self, pool: Pool) -> None:
        for proc in self.workers.values():
            if proc.pool is pool:
                self._retire(proc, self.config.shutdown.graceful_timeout)

    # -- workers --

    def _keep_worker_count(self, now: float) -> None:
        for pool in self.pools:
            if pool.failed:
                continue
            active = {proc.slot: proc for proc in self.workers.values()
                      if proc.pool is pool and not proc.retiring}
            starting = sum(proc.seen_connection is not Connection.CONSUMING for proc in active.values())
            for slot in sorted(pool.slots):
                if pool.replacing is not None and starting:
                    break  # rolling: the next slot once this one's new worker consumes
                if slot not in active and pool.respawn.may_start(now, slot):
                    self._spawn(pool, slot)
                    starting += 1
            for slot, proc in active.items():
                if slot not in pool.slots:
                    self._retire(proc, self.config.shutdown.graceful_timeout)

    def _autoscale(self, now: float) -> None:
        """Once per autoscaling.STEP_INTERVAL: grow an autoscaled pool by one
        worker, or retire its workers idle for idle_timeout (autoscaling.py)."""
        if now - self.autoscaled_at < autoscaling.STEP_INTERVAL:
            return
        self.autoscaled_at = now
        for pool in self.pools:
            bounds = pool.config.workers
            if not bounds.autoscaled or pool.failed:
                continue
            running = [proc for proc in self.workers.values() if proc.pool is pool and not proc.retiring]
            for proc in running:
                record = proc.record.read()
                proc.activity.look(record.busy_since is not None, sum(record.outcomes.values()), now)
            ready = self.queue_monitor.messages_ready(pool.config.name)
            if not self.quiet.on and autoscaling.should_grow(bounds, pool.desired, running, ready):
                pool.scale_to(pool.desired + 1)
                log.info("Pool %r: %d messages ready and every worker busy; one worker more (%d, max %d).",
                         pool.config.name, ready, pool.desired, bounds.max)
                continue
            for proc in autoscaling.idle_to_retire(bounds, pool.desired, running, now):
                pool.slots.discard(proc.slot)
                log.info("Pool %r: worker %s idle for %.0f s; retiring it (%d left, min %d).",
                         pool.config.name, proc.name, proc.activity.idle_for(now), pool.desired, bounds.min)
                self._retire(proc, self.config.shutdown.graceful_timeout)

    def _spawn(self, pool: Pool, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        command_read, command_write = os.pipe()
        record = WorkerRecord()
        ring = FinishedRing() if pool.config.deduplicate else None

        def child_main() -> int:
            os.close(read_fd)
            os.close(command_write)
            self._close_master_fds()
            # A pool from a reload: the master imported no handler for it; the worker does.
            if pool.handler is None and not reloading.import_handler_after_fork(
                    pool, self.config.path, slot, write_fd, self.preloaded):
                return os.EX_CONFIG
            return worker.run(worker.WorkerContext(
                pool=pool.config, broker=self.config.broker, handler=pool.handler, slot=slot, quiet=self.quiet,
                report_fd=write_fd, command_fd=command_read, record=record,
                lost_attempts=self.lost_attempts.counts(), master_pid=self.pid,
                graceful_timeout=self.config.shutdown.graceful_timeout, tracing=self.config.tracing.enabled,
                finished_ring=ring))

        pid = children.fork(child_main, f"Worker {pool.config.name}[{slot}]")
        if ring is not None:
            self.finished.watch(pid, ring, pool.config.queue)
        os.close(write_fd)
        os.close(command_read)
        os.set_blocking(read_fd, False)
        os.set_blocking(command_write, False)
        proc = WorkerProcess(pool, slot, pid, reporting.EventReader(read_fd), command_write, record, time.monotonic())
        self.workers[pid] = proc
        log.info("Worker %s spawned (pid %d).", proc.name, pid)

    def _close_master_fds(self) -> None:
        """In a new child: let go of what belongs to the master."""
        self.notifier.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self.http:
            self.http.close()
        self.queue_monitor.close_in_child()
        if self.console:
            self.console.close_in_child()
        if self.reload:
            self.reload.close_in_child()
        for proc in self.workers.values():
            os.close(proc.reader.fd)
            os.close(proc.command_fd)
            proc.record.close()
        self.finished.close_in_child()

    def _retire(self, proc: WorkerProcess, timeout: float) -> None:
        """Ask a worker to finish its task and exit; it is not replaced."""
        if not proc.retiring:
            proc.retire(time.monotonic() + timeout)
            self._kill(proc, signal.SIGTERM)

    def _kill(self, proc: WorkerProcess, signum: int) -> None:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass  # already dead; the reaper will see it

    def _enforce_time_limits(self, now: float) -> None:
        for proc in self.workers.values():
            limit = proc.pool.config.time_limit
            task = limit and proc.record.read()
            if not (task and task.past_time_limit(limit, now) and proc.over_time_limit()):
                continue
            if task.settling_since is None:
                log.warning("Worker %s (pid %d) exceeded time_limit=%ss on task %s; killing it.",
                            proc.name, proc.pid, limit, task.message_key)
            else:
                log.warning("Worker %s (pid %d) did not settle task %s within %.0f s of its handler's end "
                            "(time_limit=%ss); killing it.", proc.name, proc.pid, task.message_key,
                            SETTLE_TIMEOUT, limit)
            self._kill(proc, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.workers.pop(pid, None)
            if proc is not None:
                self._read_reports(proc)
                os.close(proc.reader.fd)
                os.close(proc.command_fd)
                final = proc.record.read()
                proc.record.close()
                self.finished.worker_gone(pid, final)
                self.metrics.worker_gone(proc.pool.config.name, final)
                self._worker_exited(proc, status, final)
            elif self.reload and pid == self.reload.pid:
                self._reload_ended(status)
            elif not (self.console and self.console.reaped(pid, status)):
                self.queue_monitor.reaped(pid, status)

    def _worker_exited(self, proc: WorkerProcess, status: int, final) -> None:
        """``final``: the last snapshot of the worker's record."""
        pool, now = proc.pool, time.monotonic()
        how = describe_status(status)
        if final.busy_since is not None:
            self.metrics.record_task(pool.config.name, Outcome.FAILED)
            self._count_lost_attempt(final.message_key)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == os.EX_CONFIG and pool.failed:
            log.error("Worker %s %s with a configuration error; pool %r is not restarted until a "
                      "reload fixes it.", proc.name, how, pool.config.name)
            return
        busy = final.busy_since is not None
        reason, why = classify_exit(status, proc.state, busy), explain_exit(status, proc.state, busy)
        if reason is None:
            log.info("Worker %s (pid %d) %s%s.", proc.name, proc.pid, how, why)
            return
        self.metrics.restarts.labels(pool.config.name, reason).inc()
        if reason == RECYCLED:
            log.info("Worker %s (pid %d) %s (%s); replacing it.", proc.name, proc.pid, how, reason)
            pool.respawn.reset(proc.slot)  # a planned exit, however early, is no crash loop
            return
        hint = " Perhaps out of memory?" if may_be_out_of_memory(status, proc.state, busy) else ""
        log.warning("Worker %s (pid %d) %s (%s)%s; replacing it.%s", proc.name, proc.pid, how, reason, why, hint)
        delay = pool.respawn.exited(now - proc.started_at, now, proc.slot)
        if delay:
            log.warning("Worker %s died %d times in a row within %.0f s of starting; next start in %.0f s.",
                        proc.name, pool.respawn.early_deaths(proc.slot), EARLY_DEATH_SECONDS, delay)

    def _count_lost_attempt(self, key: str) -> None:
        self.lost_attempts.count_lost(key, self.workers.values())

    def _answer_lost_queries(self) -> None:
        self.lost_attempts.answer_queries(self.workers.values(), time.monotonic())

    # -- reports from workers --

    def _read_reports(self, proc: WorkerProcess) -> None:
        events, _ = proc.reader.read()
        for event, fields in events:
            if event in (reporting.CONNECTED, reporting.CONSUMING, reporting.DISCONNECTED):
                proc.reported(event)
                if event == reporting.CONSUMING and proc.pool.replacing is not None:
                    self._rolled(proc)
            elif event == lost_attempts.QUERY:
                self.lost_attempts.query(proc, fields["key"], time.monotonic(), fields.get("finished"))
            elif event == lost_attempts.RETURNED:
                self._count_lost_attempt(fields["key"])
            elif event == lost_attempts.CLEAR:
                self.lost_attempts.clear(fields["key"], self.workers.values())
            elif event == reporting.RECYCLING:
                proc.recycling()
            elif event == reporting.FATAL:
                proc.pool.failed = fields["error"]

    # -- state for metrics, status and systemd --

    def _pool_counts(self, pool: Pool) -> dict:
        procs = [p for p in self.workers.values() if p.pool is pool]
        busy = sum(p.busy_since is not None for p in procs)
        return {
            "name": pool.config.name,
            "queue": pool.config.queue,
            "desired": pool.desired,
            "min": pool.config.workers.min,
            "max": pool.config.workers.max,
            "workers": len(procs),
            "consuming": sum(p.seen_connection is Connection.CONSUMING for p in procs),
            "busy": busy,
            "saturation": busy / len(procs) if procs else 0.0,
            "connected": sum(p.seen_connection in (Connection.CONNECTED, Connection.CONSUMING) for p in procs),
            "failed": pool.failed,
        }

    def is_ready(self) -> bool:
        """Ready for work (/readyz, wqd_ready): every pool consumes, and wqd is neither quiet nor stopping."""
        return self._workers_up() and not self.quiet.on

    def _workers_up(self) -> bool:
        """Every pool has a worker consuming, or connected while quiet: READY=1 for systemd."""
        up = (Connection.CONNECTED, Connection.CONSUMING) if self.quiet.on else (Connection.CONSUMING,)
        return all(any(p.pool in (pool, pool.replacing) and p.seen_connection in up for p in self.workers.values())
                   for pool in self.pools) and not self.stopping

    def _live_records(self):
        for proc in self.workers.values():
            yield proc.pool.config.name, proc.record

    def _snapshot(self):
        return [self._pool_counts(pool) for pool in self.pools], self.is_ready(), self.quiet.on

    def _readyz(self):
        if self.is_ready():
            return 200, "text/plain", b"ready\n"
        if self.quiet.on and not self.stopping:
            return 503, "text/plain", b"not ready: quiet (SIGTSTP); workers consume nothing until SIGCONT\n"
        return 503, "text/plain", b"not ready: a pool has no consuming worker\n"

    def status(self) -> dict:
        now, totals = time.monotonic(), self.metrics.task_totals()
        pools = []
        for pool in self.pools:
            counts = self._pool_counts(pool)
            counts["tasks"] = totals[pool.config.name].outcomes
            counts["worker_processes"] = [_worker_status(proc, now, self.quiet.on) for proc in
                                          sorted(self.workers.values(), key=lambda p: p.slot) if proc.pool is pool]
            pools.append(counts)
        return {"pid": self.pid, "ready": self.is_ready(), "quiet": self.quiet.on, "stopping": self.stopping,
                "pools": pools,
                "broker": self.queue_monitor.broker}  # {server, url} the queue monitor is connected to, or None

    def _notify(self) -> None:
        ready = self._workers_up()
        if ready and not self.was_ready:
            self.was_ready = True
            log.info("Ready: every pool has a consuming worker.")
            self.notifier.notify("READY=1", "STATUS=" + self._status_line())
        elif self.stopping and self.workers:
            self._extend_stop_timeout()
        elif self.notifier.address and not self.stopping:
            line = self._status_line()
            if line != self.last_status_line:
                self.last_status_line = line
                self.notifier.notify("STATUS=" + line)
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() - self.last_watchdog >= interval:
            self.last_watchdog = time.monotonic()
            self.notifier.notify("WATCHDOG=1")

    def _extend_stop_timeout(self) -> None:
        """About once a second while workers finish their tasks. The master
        bounds the stop itself (graceful_timeout, then SIGKILL), so systemd's
        TimeoutStopSec need not, and must not cut a long task short."""
        now = time.monotonic()
        if now - self.last_stop_extend < LOOP_TIMEOUT:
            return
        self.last_stop_extend = now
        busy = sum(proc.busy_since is not None for proc in self.workers.values())
        self.notifier.extend_timeout(STOP_EXTEND_SECONDS, f"Stopping: {len(self.workers)} workers left, "
                                                          f"{busy} finishing a task")

    def _status_line(self) -> str:
        parts, totals = [], self.metrics.task_totals()
        for pool in self.pools:
            counts = self._pool_counts(pool)
            done = totals[pool.config.name].outcomes["succeeded"]
            bounds = pool.config.workers
            scaling = f" ({bounds})" if bounds.autoscaled else ""
            parts.append(f"{counts['name']}: {counts['workers']}/{counts['desired']}{scaling} workers, "
                         f"{counts['connected']} connected, {done} done")
        quiet = "Quiet (SIGCONT resumes): " if self.quiet.on else ""
        return quiet + "; ".join(parts)


def _worker_status(proc: WorkerProcess, now: float, quiet: bool) -> dict:
    busy_since = proc.busy_since
    if proc.stalled:  # not run for a while (stalls.py), whatever it last reported
        state = "stalled"
    elif quiet and proc.connection is Connection.CONNECTED:  # consuming nothing while quiet, not about to
        state = "quiet"
    else:
        state = proc.connection.value
    return {"pid": proc.pid, "name": proc.name, "state": state, "busy": busy_since is not None,
            "task_age": round(now - busy_since, 3) if busy_since else None,
            "stopping": proc.retiring}


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise
