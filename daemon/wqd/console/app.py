"""The console's routes, on the master's HTTP endpoint (every path but
/metrics, /healthz, /readyz and /status), and its part in the master's loop.

Every answer carries a strict Content-Security-Policy (only this origin's
stylesheet; no script at all, no frames, forms only to itself) and is never
cached. Actions are POSTs, allowed only as auth.py says, each logged as an
audit line (who, what, result) and counted in wqd_console_actions_total.
"""

import collections
import importlib.resources
import logging
import os
import time

from prometheus_client import Counter

from wqd import errors
from wqd.broker.dead_letters import printable
from wqd.config.limits import MAX_WORKERS
from wqd.console import dead_pages, history, page, view
from wqd.console.auth import COOKIE, Auth, Refused
from wqd.console.dead_work import DeadWork

log = logging.getLogger("wqd.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HTML = "text/html; charset=utf-8"
DEAD_READING_MAX_AGE = 5.0  # a dead-letter page older than this asks for a new reading
STATIC = {"/static/console.css": ("console.css", "text/css; charset=utf-8")}
ACTIONS = ("quiet", "resume", "scale", "replay", "purge")
# A page asked for again within this long (same path, query and session) is
# served as rendered: many browsers, or one reloading in a loop, cost the
# master at most one rendering per page and second. Any action clears it.
PAGE_CACHE_SECONDS = 1.0
PAGE_CACHE_SIZE = 32


def _static(name: str) -> bytes:
    return importlib.resources.files("wqd.console").joinpath("static", name).read_bytes()


def start(master, set_quiet, close_inherited):
    """The console for the master's HTTP endpoint, or None when console.enabled is false."""
    return Console(master, set_quiet, close_inherited) if master.config.console.enabled else None


class Console:
    """Served by the master's HTTP endpoint, which passes on the loop's turns (tick, watched, close)."""

    def __init__(self, master, set_quiet, close_inherited):
        """``set_quiet(bool)``: the master's TSTP/CONT switch; ``close_inherited()``:
        what a child of the master runs first, to close the master's descriptors."""
        self.master = master
        self._set_quiet = set_quiet
        self._close_inherited = close_inherited
        self._config = master.config  # a reload's new one is taken at the next tick
        self._pid = os.getpid()
        try:
            self.auth = Auth(master.config.console.token_file)
        except (OSError, ValueError) as exc:  # changed since the configuration was checked
            raise errors.ConfigError(f"console.token_file {master.config.console.token_file}: {exc}") from None
        self.history = history.RateHistory()
        self.dead = DeadWork(master.config, self._dead_job_done)
        self.actions = Counter("wqd_console_actions", "Actions asked for in the console, by result (done, failed, "
                               "refused).", ["action", "result"], registry=master.metrics.registry)
        for action in ACTIONS:  # every series from the start at zero, as the pools' are
            for result in ("done", "failed", "refused"):
                self.actions.labels(action, result)
        self._static = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
        self._pages = collections.OrderedDict()  # (path, query, session id) -> (monotonic time, answer)

    # -- the master's loop --

    def tick(self, now: float) -> None:
        if self.master.config is not self._config:
            self._reloaded(self.master.config)
        if self.history.due(now):
            self.history.sample(now, {pool: totals.outcomes for pool, totals in self.master.metrics.task_totals().items()})
        if not self.master.stopping:
            self.dead.tick(now, self._close_inherited)

    def watched(self):
        """(fd, callback) to wait on for reading."""
        if self.dead.fileno() is not None:
            yield self.dead.fileno(), self.dead.read

    def close(self) -> None:
        """In the master at its exit (the dead-letter child is killed), and in every child it forks."""
        if os.getpid() == self._pid:
            self.dead.close()
        else:
            self.dead.close_in_child()

    def _reloaded(self, config) -> None:
        """A reload: its token file and pools take effect now."""
        self._config = self.dead.config = config
        try:
            self.auth.reload(config.console.token_file)
        except (OSError, ValueError) as exc:
            log.error("Console: keeping the previous tokens; cannot read %s: %s", config.console.token_file, exc)

    # -- requests --

    def handle(self, request):
        """(status, content type, body, headers) for a request the endpoint's own routes do not take."""
        if request.method == "POST":
            return self._post(request)
        if request.path in self._static:
            body, kind = self._static[request.path]
            return 200, kind, body, {**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
        session = self.auth.session(request)
        if request.path in ("/dead", "/dead/letter"):
            self.dead.browse_soon(DEAD_READING_MAX_AGE)
        key = (request.path, tuple(sorted((name, tuple(values)) for name, values in request.query.items())),
               session.id if session else None)
        now = time.monotonic()
        cached = self._pages.get(key)
        if cached is not None and now - cached[0] < PAGE_CACHE_SECONDS:
            return cached[1]
        answer = self._render(request, session)
        self._pages[key] = (now, answer)
        self._pages.move_to_end(key)
        while len(self._pages) > PAGE_CACHE_SIZE:
            self._pages.popitem(last=False)
        return answer

    def _render(self, request, session):
        csrf = session.csrf if session else ""
        if request.path == "/":
            return self._page("Pools", page.overview(view.overview(self.master), self.history, csrf), session,
                              refresh=page.REFRESH_SECONDS)
        if request.path == "/dead":
            busy = self.dead.letters is None or any(job.kind != "browse" for job in self.dead.jobs())
            return self._page("Dead letters", dead_pages.listing(self.dead, request.query, csrf), session,
                              refresh=2 if busy else None)
        if request.path == "/dead/letter":
            return self._page("Dead letter", dead_pages.letter_page(self.dead, request.query, csrf), session)
        if request.path == "/login":
            return self._page("Log in", _login_form(self.auth.enabled), session)
        if request.path == "/workers":
            name = (request.query.get("pool") or [""])[0]
            pool = next((p for p in self.master.pools if p.config.name == name), None)
            return self._page("Workers", page.worker_count_form(pool, csrf), session)
        return self._page("Not found", page.message("Not found", f"Nothing at {request.path}."), session, status=404)

    def _post(self, request):
        self._pages.clear()
        if request.path == "/login":
            return self._log_in(request)
        if request.path == "/logout":
            self.auth.log_out(request)
            return 303, "text/plain", b"logged out\n", {**SECURITY_HEADERS, "Location": "/",
                                                      "Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; "
                                                                    f"SameSite=Strict"}
        action = request.path.removeprefix("/actions/")
        handler = {"quiet": self._quiet, "resume": self._quiet, "scale": self._scale, "replay": self._replay,
                   "purge": self._purge}.get(action)
        if handler is None or not request.path.startswith("/actions/"):
            return self._page("Not found", page.message("Not found", f"No action at {request.path}."), None,
                              status=404)
        form = request.form()
        try:
            who = self.auth.authorize(request)
        except Refused as exc:
            self._audit("(unknown)", action, form, "refused", str(exc))
            return self._page("Refused", page.message("Action refused", str(exc)), self.auth.session(request),
                              status=403)
        try:
            if self.master.stopping:
                raise errors.WqdError("wqd is stopping: it takes no more actions")
            done, back = handler(action, who, form)
        except errors.WqdError as exc:
            self._audit(who, action, form, "failed", str(exc))
            return self._page("Not done", page.message("Not done", str(exc)), self.auth.session(request),
                              status=400)
        if done:
            self._audit(who, action, form, "done", done)
        return 303, "text/plain", b"see other\n", {**SECURITY_HEADERS, "Location": back}

    def _quiet(self, action, who, form):
        self._set_quiet(action == "quiet")
        return ("workers finish their task and stop consuming" if action == "quiet" else "workers consume again"), "/"

    def _scale(self, action, who, form):
        name, wanted = _field(form, "pool"), _field(form, "workers")
        pool = next((p for p in self.master.pools if p.config.name == name), None)
        if pool is None:
            raise errors.WqdError(f"there is no pool {printable(name)!r}")
        bounds = pool.config.workers
        low, high = (bounds.min, bounds.max) if bounds.autoscaled else (1, MAX_WORKERS)
        if not wanted.isdigit() or not low <= int(wanted) <= high:
            raise errors.WqdError(f"pool {name!r} takes a worker count from {low} to {high}, not "
                                  f"{printable(wanted)!r}")
        pool.scale_to(int(wanted))
        log.info("Pool %r: %d workers, as the console asked (until the next reload).", name, int(wanted))
        return f"pool {name} now has {wanted} workers (until the next reload)", "/"

    def _replay(self, action, who, form):
        ids, exceptions, every = form.get("id", []), form.get("exception", []), _field(form, "all") == "1"
        if ids and every:
            raise errors.WqdError("give message ids or all, not both")
        if not (ids or exceptions or every):
            raise errors.WqdError("name the messages to replay: select some, pick an exception, or replay all")
        self.dead.submit("replay", who, pool=_field(form, "pool"), ids=ids, exceptions=exceptions, all=every)
        return None, "/dead"  # audited when the child is done

    def _purge(self, action, who, form):
        if _field(form, "yes") != "1":
            raise errors.WqdError("purge deletes dead messages for good: tick the confirmation box")
        try:
            older_than = dead_pages.parse_age(_field(form, "older_than"))
        except ValueError:
            raise errors.WqdError(f"older than: expected seconds, or a number with s, m, h or d, not "
                                  f"{printable(_field(form, 'older_than'))!r}") from None
        self.dead.submit("purge", who, pool=_field(form, "pool"), older_than=older_than)
        return None, "/dead"

    def _dead_job_done(self, job) -> None:
        self._pages.clear()
        self._audit(job.who, job.kind, job.fields, "done" if job.ok else "failed", job.summary, raw=True)

    def _log_in(self, request):
        try:
            session = self.auth.log_in(request, _field(request.form(), "token"))
        except Refused as exc:
            self._audit("(unknown)", "login", {}, "refused", str(exc))
            return self._page("Log in", _login_form(self.auth.enabled, str(exc)), None, status=403)
        log.info("Console: %s logged in.", printable(session.name))
        return 303, "text/plain", b"logged in\n", {
            **SECURITY_HEADERS, "Location": "/",
            "Set-Cookie": f"{COOKIE}={session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(3600 * 12)}"}

    def _audit(self, who: str, action: str, form: dict, result: str, detail: str, raw: bool = False) -> None:
        fields = form if raw else {name: values if len(values) > 1 else values[0]
                                   for name, values in form.items() if name != "csrf"}
        what = ", ".join(f"{name}={value!r}" for name, value in fields.items() if value not in (None, [], "", False))
        log.info(printable(f"Console action: who={who} action={action}{' ' + what if what else ''} "
                           f"result={result}: {detail}"))
        if action != "login":
            self.actions.labels(action, result).inc()

    def _page(self, title: str, body: str, session, refresh=None, status: int = 200):
        html = page.layout(title, body, who=session.name if session else None, actions_enabled=self.auth.enabled,
                           refresh=refresh, csrf=session.csrf if session else "")
        return status, HTML, html.encode(), SECURITY_HEADERS


def _field(form: dict, name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _login_form(enabled: bool, error: str = "") -> str:
    if not enabled:
        return page.message("Read-only", "This console is read-only: set console.token_file in wqd's "
                                         "configuration to allow actions.")
    shown = f'<p class="error">{page.e(error)}</p>' if error else ""
    return (f'<section><h1>Log in</h1>{shown}<form method="post" action="/login" class="login"><label>token '
            f'<input type="password" name="token" autocomplete="current-password" required></label> '
            f'<button type="submit">Log in</button></form></section>')
