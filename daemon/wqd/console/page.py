"""The console's HTML: the page around every view, and the overview of the pools.

Everything shown that did not come from this file goes through ``e()``
(html.escape, quotes included): pool and queue names, task ids, broker
versions, and on the dead-letter pages everything a message carries. The
pages hold no script and no inline style, so the Content-Security-Policy
(app.py) can forbid both.
"""

import html
from urllib.parse import quote

from wqd.broker.dead_letters import age_text
from wqd.config.limits import MAX_WORKERS
from wqd.console import charts, history

e = html.escape
REFRESH_SECONDS = 5
CHART_NAMES = {"succeeded": "done", "failed": "failed", "retried": "retried", "dead_lettered": "dead-lettered"}


def layout(title: str, body: str, who=None, actions_enabled: bool = False, refresh=None, csrf: str = "") -> str:
    """A whole page; ``refresh``: reload it every so many seconds (no JavaScript needed)."""
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    if who:
        account = (f'<form method="post" action="/logout" class="inline">{csrf_field(csrf)}'
                   f'<span>signed in as {e(who)}</span> <button type="submit">Log out</button></form>')
    elif actions_enabled:
        account = '<a href="/login">Log in to act</a>'
    else:
        account = '<span class="muted">read-only</span>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
            f'<title>{e(title)} · wqd</title><link rel="stylesheet" href="/static/console.css"></head>'
            f'<body><header><nav><a href="/" class="brand">wqd</a> <a href="/">Pools</a> '
            f'<a href="/dead">Dead letters</a></nav><div class="account">{account}</div></header>'
            f'<main>{body}</main></body></html>')


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">' if csrf else ""


def overview(view: dict, rates: history.RateHistory, csrf: str = "") -> str:
    """The pools page's body."""
    broker = view.get("broker")
    broker_text = f'{e(broker["server"])} at {e(broker["url"])}' if broker else "not connected (queue depth unknown)"
    state = "stopping" if view["stopping"] else "quiet" if view["quiet"] else "ready" if view["ready"] else "not ready"
    toggle = ("resume", "Resume (consume again)") if view["quiet"] else ("quiet", "Quiet (finish tasks, stop consuming)")
    parts = [f'<section class="summary"><h1>wqd {e(view["version"])} <span class="state {state.replace(" ", "-")}">'
             f'{state}</span></h1><p>master pid {view["pid"]} · broker: {broker_text}</p>'
             f'<form method="post" action="/actions/{toggle[0]}" class="inline">{csrf_field(csrf)}'
             f'<button type="submit">{toggle[1]}</button></form></section>']
    for pool in view["pools"]:
        parts.append(_pool(pool, rates.rates(pool["name"]), csrf))
    if view.get("outbox"):
        parts.append(_outbox(view["outbox"]))
    return "".join(parts)


def _outbox(outbox: dict) -> str:
    """The outbox relay's card (docs/outbox.md): rows waiting, the oldest's age, totals, the relay's state."""
    def count(value):
        return "unknown" if value is None else str(value)

    state = "up" if outbox["relay_up"] else "down"
    problem = f'<p class="problem">{e(outbox["problem"])}</p>' if outbox.get("problem") else ""
    return (f'<section class="pool"><h2>outbox <span class="state {"ready" if state == "up" else "not-ready"}">'
            f'relay {state}</span></h2><p>table <code>{e(outbox["table"])}</code>: '
            f'{count(outbox.get("pending"))} rows waiting · oldest {age_text(outbox.get("oldest_age_seconds"))} · '
            f'{count(outbox.get("set_aside"))} set aside · {outbox["relayed"]} relayed · '
            f'{outbox["refused"]} refused</p>{problem}</section>')


def _pool(pool: dict, rates: dict, csrf: str) -> str:
    name = pool["name"]
    queue = pool["queue_counts"]
    depth = (f'{queue["messages"]} ready · {queue["consumers"]} consumers' if queue else "depth unknown")
    dead = pool["dead_letter_counts"]
    if dead:
        dead_text = f'<a href="/dead?pool={e(quote(name, safe=""))}">{dead["messages"]} dead letters</a>'
    elif not pool["dead_letter_queue"]:
        dead_text = "no dead-letter queue"
    else:  # polled with the work queue, so not there: declared at the first dead letter
        dead_text = "no dead letters yet" if queue else "dead letters: unknown"
    scaling = (f'autoscaling {pool["min"]}–{pool["max"]}' if pool["autoscaled"] else "fixed size")
    failed = f'<p class="error">{e(pool["failed"])}</p>' if pool["failed"] else ""
    workers = "".join(_worker(worker) for worker in pool["worker_processes"]) or \
        '<tr><td colspan="5" class="muted">no worker running</td></tr>'
    tasks = pool.get("tasks", {})
    totals = " · ".join(f'{tasks.get(outcome, 0)} {label}' for outcome, label in CHART_NAMES.items())
    chart_cells = "".join(
        f'<figure>{charts.sparkline(rates[outcome], f"{label} per minute", outcome)}'
        f'<figcaption>{label}/min: {rates[outcome][-1] if rates[outcome] else 0:.1f}</figcaption></figure>'
        for outcome, label in CHART_NAMES.items())
    return (f'<section class="pool" id="pool-{e(name)}"><h2>{e(name)}</h2>{failed}'
            f'<p>queue <code>{e(pool["queue"])}</code>: {depth} · {dead_text}</p>'
            f'<p>{pool["workers"]}/{pool["desired"]} workers ({scaling}) · {pool["busy"]} busy · '
            f'{pool["restarts"]} restarts · tasks: {totals}</p>'
            f'<div class="charts">{chart_cells}</div>'
            f'<div class="scroll"><table class="workers"><thead><tr><th>worker</th><th>pid</th><th>state</th>'
            f'<th>task</th><th>age</th></tr></thead><tbody>{workers}</tbody></table></div>'
            f'<p><a href="/workers?pool={e(quote(name, safe=""))}">Change the worker count</a></p></section>')


def worker_count_form(pool, csrf: str) -> str:
    """The form that sets a pool's worker count (on a page that does not reload itself)."""
    if pool is None:
        return message("No such pool", "There is no such pool (a reload removed it?).")
    bounds = pool.config.workers
    low, high = (bounds.min, bounds.max) if bounds.autoscaled else (1, MAX_WORKERS)
    return (f'<section><h1>Workers of {e(pool.config.name)}</h1><p>Now {pool.desired}; from {low} to {high}. '
            f'Kept until the next reload, which sets the configured count again.</p>'
            f'<form method="post" action="/actions/scale" class="inline">{csrf_field(csrf)}'
            f'<input type="hidden" name="pool" value="{e(pool.config.name)}"><label>workers '
            f'<input type="number" name="workers" min="{low}" max="{high}" value="{pool.desired}"></label> '
            f'<button type="submit">Set</button></form><p><a href="/">Back</a></p></section>')


def _worker(worker: dict) -> str:
    busy = "busy" if worker["busy"] else "idle"
    task = e(worker.get("task_id") or "") if worker["busy"] else '<span class="muted">—</span>'
    age = f'{worker["task_age"]:.1f} s' if worker["task_age"] is not None else ""
    stopping = " (stopping)" if worker["stopping"] else ""
    return (f'<tr class="{busy}"><td>{e(worker["name"])}</td><td>{worker["pid"]}</td>'
            f'<td>{busy}, {e(worker["state"])}{stopping}</td><td class="id">{task}</td><td>{age}</td></tr>')


def message(title: str, text: str, back: str = "/") -> str:
    """A short page body: what happened, and a way back."""
    return f'<section><h1>{e(title)}</h1><p>{e(text)}</p><p><a href="{e(back)}">Back</a></p></section>'
