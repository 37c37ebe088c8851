"""The master process: forks workers, keeps their number, stops and reloads.

Signal handlers only record the signal and wake the loop through the wakeup
fd; the loop acts: signals, worker reports, reaping, time limits, autoscaling,
the worker count, notifications. The master holds no broker connection.
"""

import enum
import logging
import os
import selectors
import signal
import time

from setproctitle import setproctitle

from wqd import errors, logs
from wqd.console import app as console
from wqd.ipc import reporting
from wqd.ipc.quiet import QuietSwitch
from wqd.ipc.task_stats import Outcome
from wqd.ipc.worker_record import WorkerRecord
from wqd.master import autoscaling, children, reloading, views
from wqd.master.http_endpoint import HTTPEndpoint
from wqd.master.metrics import Metrics
from wqd.master.service_children import ServiceChildren
from wqd.master.stalls import StallWatch, kill_after, over_time_limit
from wqd.master.supervision import (
    Pool,
    WorkerProcess,
    rolled_over,
    slots_to_fill,
    worker_exited,
)
from wqd.master.systemd import Notifier
from wqd.redelivery.deduplication import FinishedRing
from wqd.redelivery.master_accounts import REPORTS as REDELIVERY_REPORTS
from wqd.redelivery.master_accounts import MasterAccounts
from wqd.worker import main as worker

log = logging.getLogger("wqd.master")

# Longest the loop sleeps when nothing happens (it wakes on signals and reports).
LOOP_TIMEOUT = 1.0
# After a fast stop, workers get this long to exit on SIGQUIT before SIGKILL.
FAST_STOP_TIMEOUT = 2.0
HANDLED_SIGNALS = ("HUP", "INT", "QUIT", "TERM", "TTIN", "TTOU", "TSTP", "CONT", "CHLD")


class State(enum.Enum):
    """Where the master is in its life. STARTING until every pool consumes
    (then READY=1 to systemd), and again after a reload until the new pools
    do; a stop is graceful (workers finish their task) or fast (SIGQUIT)."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPING_FAST = "stopping fast"


class Master:
    """The arbiter: its loop and the workers' lifecycle (spawn, retire, kill,
    reap, respawn), stops and reloads. What it shows is views.py's; what a
    worker's exit means, supervision.py's; its side of redelivery accounting, master_accounts.py's."""

    def __init__(self, config, handlers, code):
        """``code``: the code_version.CodeVersion the handlers were imported from."""
        self.config = config
        self.pools = [Pool(pool, handlers[pool.name]) for pool in config.pools]
        # The handler modules this process imported (its forks forget them to
        # import the code on disk), and the version of the code deployed.
        self.preloaded = code.modules
        self.code_fingerprint = code.fingerprint
        self.workers = {}  # pid -> WorkerProcess
        self.accounts = MasterAccounts(config.deduplication)  # messages finished here, attempts lost with workers
        self.signals = []
        self.state = State.STARTING
        self.quiet = QuietSwitch()  # TSTP turns it on, CONT off; every worker reads it
        self.stalls = StallWatch(config.broker.heartbeat)  # workers that stopped running
        self.autoscaled_at = 0.0  # monotonic time of the autoscaler's last look
        self.config_error = None  # why every pool failed: run() raises it once stopped
        self.notifier = Notifier()
        self.metrics = Metrics(lambda: views.snapshot(self), lambda: views.live_records(self))
        for pool in self.pools:
            self.metrics.add_pool(pool.config.name)
        # Queue depth, polled by a child process: the master never waits on the broker.
        self.service_children = ServiceChildren(config, self.metrics.registry)  # the queue monitor, the outbox relay
        self.queue_monitor, self.outbox_relay = self.service_children.queue_monitor, self.service_children.outbox_relay
        self.http = None
        self.reload = None  # the reload in progress (reloading.Reload), if any
        self.reload_again = False  # a SIGHUP came during it: one more reload follows it
        self.pid = os.getpid()

    @property
    def stopping(self) -> bool:
        return self.state in (State.STOPPING, State.STOPPING_FAST)

    # -- start and main loop --

    def run(self) -> None:
        """Run until stopped; raises errors.ConfigError when every pool had a
        configuration error, or the state file is not a regular file."""
        # First: a state file that is not a regular file stops the start here.
        self.accounts.load(any(pool.config.deduplicate for pool in self.pools))
        setproctitle(f"wqd: master -c {self.config.path}")
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w)
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, "SIG" + name), self._record_signal)
        if self.config.metrics.listen:
            self.http = HTTPEndpoint(self.config.metrics.listen, views.routes(self),
                                     console.start(self, self._set_quiet, self._close_master_fds))
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
        self.accounts.store()
        if self.reload:
            self.reload.close()
        self.service_children.close()
        if self.http:
            self.http.close()
        if self.config_error:
            raise errors.ConfigError(self.config_error)

    def _record_signal(self, signum, frame) -> None:
        """NO logging, no work: just queue the signal; the loop acts on it."""
        self.signals.append(signum)

    def _wait(self) -> None:
        """Sleep until a signal, a worker report, an HTTP client or the next deadline."""
        now = time.monotonic()
        deadlines = [pool.respawn.next_start(now) for pool in self.pools]  # None: no start waits
        if self.reload:  # wake to kill the loading child at its deadline
            deadlines.append(self.reload.deadline)
        if self.notifier.watchdog_interval:  # wake for the ping: a late one can cost a SIGABRT
            deadlines.append(self.notifier.last_watchdog + self.notifier.watchdog_interval)
        if any(pool.config.workers.autoscaled for pool in self.pools):
            deadlines.append(self.autoscaled_at + autoscaling.STEP_INTERVAL)
        soonest = min((when for when in deadlines if when is not None), default=now + LOOP_TIMEOUT)
        timeout = 0 if self.signals else self.accounts.next_look(max(0.0, min(LOOP_TIMEOUT, soonest - now)))
        # A selector made for this wait (epoll on Linux): no FD_SETSIZE ceiling
        # on the number of workers, and nothing to keep in step as pipes come and go.
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_r, selectors.EVENT_READ, lambda: children.drain(self._wakeup_r))
            for proc in self.workers.values():
                selector.register(proc.reader.fd, selectors.EVENT_READ, lambda proc=proc: self._read_reports(proc))
            if self.http:
                for fd, events, callback in self.http.watched():
                    selector.register(fd, events, callback)
            self.service_children.watch(selector)
            if self.reload and self.reload.fileno() is not None:
                selector.register(self.reload.fileno(), selectors.EVENT_READ, self.reload.read)
            for key, _ in selector.select(timeout):
                key.data()

    def _manage(self) -> None:
        """One pass of the loop's duties, in order."""
        while self.signals:
            self._handle_signal(self.signals.pop(0))
        self._reap()
        self.accounts.collect(self.workers.values())
        now = time.monotonic()
        if self.reload:
            self.reload.check_deadline(now)
        if self.http:
            self.http.tick(now)
        for proc in list(self.workers.values()):
            if proc.must_be_killed(now):
                log.warning("Worker %s (pid %d) did not stop in time; killing it.", proc.name, proc.pid)
                self._kill(proc, signal.SIGKILL)
        if self.stopping:
            return
        for proc in over_time_limit(self.workers.values(), now):
            self._kill(proc, signal.SIGKILL)
        for proc in self.stalls.look(now, self.workers.values()):
            self._kill(proc, signal.SIGKILL)
        self._autoscale(now)
        self._keep_worker_count(now)
        self.service_children.tick(now, self._close_master_fds)
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
        """Graceful: workers finish their task (SIGTERM); fast: they exit now (SIGQUIT)."""
        if self.state is State.STOPPING_FAST or (graceful and self.stopping):
            return
        self.service_children.stop()
        if self.reload:
            self.reload.cancel()
        if graceful:
            timeout = self.config.shutdown.graceful_timeout
            log.info("Graceful stop: workers finish their current task (up to %.0f s).", timeout)
            self.notifier.notify("STOPPING=1", "STATUS=Stopping: workers finish their current task")
            self.state = State.STOPPING
            for proc in self.workers.values():
                self._retire(proc, timeout)
        else:
            log.info("Fast stop: workers exit now; their unacked messages return to the queue.")
            self.notifier.notify("STOPPING=1", "STATUS=Stopping fast")
            self.state = State.STOPPING_FAST
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
            log.error("Reload failed; keeping the running configuration. %s", errors.bounded(error))
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
        replace_all, code_changed = reloading.what_changed(self.config, new_config, self.code_fingerprint, code)
        self.code_fingerprint = code.fingerprint
        pools, retired = reloading.switch_pools(self.pools, new_config, replace_all, code_changed)
        for pool in pools:
            self.metrics.add_pool(pool.config.name)
        for old in retired:
            self._retire_pool(old)
        self.pools = pools
        self.config = new_config
        self.service_children.configure(new_config)
        self.stalls.kill_after = kill_after(new_config.broker.heartbeat)
        self.state = State.STARTING  # READY=1 again once every pool consumes
        log.info("Reloaded %s; pools: %s.", self.config.path,
                 ", ".join(f"{p.config.name}={p.desired}" for p in self.pools))

    def _rolled(self, proc) -> None:
        """A new worker of a rolling pool consumes: the old worker of its slot
        retires (finishing its task on the old code); after the last slot, so
        do the old pool's workers of slots the new one no longer has."""
        for old in rolled_over(proc, list(self.workers.values())):
            self._retire(old, self.config.shutdown.graceful_timeout)

    def _retire_pool(self, pool: Pool) -> None:
        for proc in self.workers.values():
            if proc.pool is pool:
                self._retire(proc, self.config.shutdown.graceful_timeout)

    # -- workers --

    def _keep_worker_count(self, now: float) -> None:
        """Fill the pools' empty slots (as their backoff allows), retire the workers of slots gone."""
        for pool in self.pools:
            if not pool.failed:
                to_start, to_retire = slots_to_fill(pool, self.workers.values(), now)
                for slot in to_start:
                    self._spawn(pool, slot)
                for proc in to_retire:
                    self._retire(proc, self.config.shutdown.graceful_timeout)

    def _autoscale(self, now: float) -> None:
        """Once per autoscaling.STEP_INTERVAL (autoscaling.py)."""
        if now - self.autoscaled_at >= autoscaling.STEP_INTERVAL:
            self.autoscaled_at = now
            ready = self.queue_monitor.messages_ready
            for proc in autoscaling.step(self.pools, self.workers.values(), ready, self.quiet.on, now):
                self._retire(proc, self.config.shutdown.graceful_timeout)

    def _spawn(self, pool: Pool, slot: int) -> None:
        record = WorkerRecord()
        ring = FinishedRing() if pool.config.deduplicate else None

        def child_main(report_fd: int, command_fd: int) -> int:
            return worker.run(worker.WorkerContext(
                pool=pool.config, broker=self.config.broker, handler=pool.handler, slot=slot, quiet=self.quiet,
                report_fd=report_fd, command_fd=command_fd, record=record,
                lost_attempts=self.accounts.counts(), master_pid=self.pid,
                graceful_timeout=self.config.shutdown.graceful_timeout, tracing=self.config.tracing.enabled,
                finished_ring=ring, config_path=self.config.path, preloaded=self.preloaded))

        pid, read_fd, command_fd = children.fork_with_pipes(child_main, f"Worker {pool.config.name}[{slot}]",
                                                            self._close_master_fds, command_pipe=True)
        self.accounts.spawned(pid, ring, pool.config.queue)
        proc = WorkerProcess(pool, slot, pid, reporting.EventReader(read_fd), command_fd, record, time.monotonic())
        self.workers[pid] = proc
        log.info("Worker %s spawned (pid %d).", proc.name, pid)

    def _close_master_fds(self) -> None:
        """In a new child: let go of what belongs to the master."""
        self.notifier.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self.http:
            self.http.close()
        self.service_children.close_in_child()
        if self.reload:
            self.reload.close_in_child()
        for proc in self.workers.values():
            os.close(proc.reader.fd)
            os.close(proc.command_fd)
            proc.record.close()
        self.accounts.close_in_child()

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
                self.accounts.worker_gone(pid, final, self.workers.values())
                self.metrics.worker_gone(proc.pool.config.name, final)
                self._worker_exited(proc, status, final)
            elif self.reload and pid == self.reload.pid:
                self._reload_ended(status)
            else:
                self.service_children.reaped(pid, status)

    def _worker_exited(self, proc: WorkerProcess, status: int, final) -> None:
        """``final``: the last snapshot of the worker's record."""
        if final.busy_since is not None:
            self.metrics.record_task(proc.pool.config.name, Outcome.FAILED)
        reason = worker_exited(proc, status, busy=final.busy_since is not None)
        if reason is not None:
            self.metrics.restarts.labels(proc.pool.config.name, reason).inc()

    # -- reports from workers --

    def _read_reports(self, proc: WorkerProcess) -> None:
        events, _ = proc.reader.read()
        for event, fields in events:
            if event in (reporting.CONNECTED, reporting.CONSUMING, reporting.DISCONNECTED):
                proc.reported(event)
                if event == reporting.CONSUMING and proc.pool.replacing is not None:
                    self._rolled(proc)
            elif event in REDELIVERY_REPORTS:
                self.accounts.report(proc, event, fields, self.workers.values())
            elif event == reporting.RECYCLING:
                proc.recycling()
            elif event == reporting.FATAL:
                proc.pool.failed = fields["error"]

    # -- state for metrics, status and systemd (views.py) --

    def is_ready(self) -> bool:
        """Ready for work (/readyz, wqd_ready): every pool consumes, and wqd is neither quiet nor stopping."""
        return self._workers_up() and not self.quiet.on

    def _workers_up(self) -> bool:
        """READY=1 for systemd: every pool has a worker consuming (connected, while quiet)."""
        return not self.stopping and views.workers_up(self.pools, self.workers.values(), self.quiet.on)

    def _notify(self) -> None:
        """Tell systemd (systemd.py): READY=1 once every pool consumes, STATUS, stop progress, the watchdog."""
        if self.state is State.STARTING and self._workers_up():
            self.state = State.RUNNING
            log.info("Ready: every pool has a consuming worker.")
            self.notifier.notify("READY=1", "STATUS=" + views.status_line(self))
        elif self.stopping and self.workers:
            self.notifier.stopping(views.stop_line(self.workers.values()))
        elif not self.stopping:
            self.notifier.status(lambda: views.status_line(self))
        self.notifier.watchdog()
