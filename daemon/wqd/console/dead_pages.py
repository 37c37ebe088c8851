"""The dead-letter pages: the list (filtered by pool, exception and age), one
letter (properties, headers, body as text, JSON or hex), and the jobs' results.

Everything here but the markup came from a message or a handler's exception,
so every value goes through ``e()``.
"""

import base64
import json
import time
from urllib.parse import quote

from wqd.broker.dead_letters import age_text
from wqd.console.page import csrf_field, e

ERROR_SHOWN = 200  # characters of an error message in the list


def parse_age(value: str):
    """Seconds from "90", "90s", "15m", "2h" or "1d"; None when empty; raise ValueError."""
    value = value.strip().lower()
    if not value:
        return None
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(value[-1])
    number = float(value[:-1] if scale else value) * (scale or 1)
    if not number >= 0:
        raise ValueError(value)
    return number


def listing(work, query: dict, csrf: str) -> str:
    pool, exception = _one(query, "pool"), _one(query, "exception")
    try:
        older, newer = parse_age(_one(query, "older_than")), parse_age(_one(query, "newer_than"))
    except ValueError:
        older = newer = None
    parts = ['<section><h1>Dead letters</h1>', _jobs(work)]
    if work.letters is None:
        parts.append(f'<p class="error">Could not read them: {e(work.read_error)}; trying again.</p></section>'
                     if work.read_error else '<p class="muted">Reading the dead-letter queues…</p></section>')
        return "".join(parts)
    now = time.time()
    letters = [letter for letter in work.letters if (not pool or letter["pool"] == pool)
               and (not exception or letter["exception"] == exception)
               and _within(letter, now, older, newer)]
    read = f'read {age_text(now - work.read_at)} ago' if work.read_at else ""
    error = f'<p class="error">Could not read them: {e(work.read_error)}</p>' if work.read_error else ""
    parts.append(f'<p>{len(letters)} of {len(work.letters)} shown · {read} · <a href="">refresh</a></p>{error}')
    parts.append(_filters(work.letters, pool, exception, _one(query, "older_than"), _one(query, "newer_than")))
    rows = "".join(_row(letter, now) for letter in letters) or \
        '<tr><td colspan="8" class="muted">no dead letters</td></tr>'
    scope = f'<input type="hidden" name="pool" value="{e(pool)}">' if pool else ""
    everything = f"every dead letter of {e(exception)}" if exception else "every dead letter"
    replay_all = f'<input type="hidden" name="exception" value="{e(exception)}">' if exception else \
        '<input type="hidden" name="all" value="1">'
    parts.append(
        f'<form method="post" action="/actions/replay">{csrf_field(csrf)}{scope}'
        f'<div class="scroll"><table class="letters"><thead><tr><th></th><th>pool</th><th>id</th><th>age</th>'
        f'<th>attempts</th><th>bytes</th><th>exception</th><th>error</th></tr></thead><tbody>{rows}</tbody>'
        f'</table></div><button type="submit">Replay selected</button></form>'
        f'<form method="post" action="/actions/replay" class="inline">{csrf_field(csrf)}{scope}{replay_all}'
        f'<button type="submit">Replay {everything}{" of " + e(pool) if pool else ""}</button></form>'
        f'<form method="post" action="/actions/purge" class="purge">{csrf_field(csrf)}{scope}'
        f'<label>older than <input name="older_than" size="6" placeholder="e.g. 1h"></label> '
        f'<label><input type="checkbox" name="yes" value="1"> yes, delete them for good</label> '
        f'<button type="submit" class="danger">Purge{" " + e(pool) if pool else ""}</button></form></section>')
    return "".join(parts)


def letter_page(work, query: dict, csrf: str) -> str:
    pool, wanted, shown_as = _one(query, "pool"), _one(query, "id"), _one(query, "as") or "text"
    found = next((letter for letter in work.letters or [] if letter["pool"] == pool and letter["id"] == wanted), None)
    if found is None:
        return (f'<section><h1>Dead letter {e(wanted)}</h1><p>Not in the last reading of the dead-letter queues '
                f'(replayed or purged since?).</p><p><a href="/dead">All dead letters</a></p></section>')
    body = base64.b64decode(found["body"])
    link = f'/dead/letter?pool={e(_quote(pool))}&amp;id={e(_quote(wanted))}'
    cut = f" (first {len(body)} of {found['body_bytes']} bytes)" if len(body) < found["body_bytes"] else ""
    properties = "".join(f'<tr><th>{e(name)}</th><td>{e(value)}</td></tr>'
                         for name, value in found["properties"].items())
    headers = "".join(f'<tr><th>{e(name)}</th><td><pre>{e(value)}</pre></td></tr>'
                      for name, value in found["headers"])
    views = " · ".join(f'<a href="{link}&amp;as={kind}"{" class=current" if kind == shown_as else ""}>{kind}</a>'
                       for kind in ("text", "json", "hex"))
    return (f'<section><h1>Dead letter <span class="id">{e(found["id"])}</span></h1>'
            f'<p>pool {e(found["pool"])} · queue <code>{e(found["dead_letter_queue"])}</code> · age '
            f'{age_text(_age(found, time.time()))} · attempts {e(str(found["attempts"] or "?"))} · replayed before '
            f'{found["replays"]} times</p><p class="exception"><strong>{e(found["exception"])}</strong>: '
            f'{e(found["error"])}</p>'
            f'<form method="post" action="/actions/replay" class="inline">{csrf_field(csrf)}'
            f'<input type="hidden" name="pool" value="{e(pool)}"><input type="hidden" name="id" value="{e(wanted)}">'
            f'<button type="submit">Replay this letter</button></form>'
            f'<h2>Properties</h2><div class="scroll"><table class="fields">{properties}</table></div>'
            f'<h2>Headers</h2><div class="scroll"><table class="fields">{headers}</table></div>'
            f'<h2>Body{cut}</h2><p>as {views}</p><pre class="body">{e(render_body(body, shown_as))}</pre>'
            f'</section>')


def render_body(body: bytes, shown_as: str) -> str:
    """The body as text (undecodable bytes as \\xNN), pretty JSON (else why not), or a hex dump."""
    if shown_as == "hex":
        return "\n".join(f"{offset:08x}  {body[offset:offset + 16].hex(' ')}" for offset in range(0, len(body), 16))
    text = body.decode("utf-8", "backslashreplace")
    if shown_as == "json":
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError as exc:
            return f"(not JSON: {exc})\n{text}"
    return text


def _jobs(work) -> str:
    items = []
    for job in work.jobs():
        if job.kind != "browse":
            items.append(f'<li class="pending">{e(job.describe())} by {e(job.who)}: under way…</li>')
    for job in work.results:
        lines = "".join(f"<li>{e(line)}</li>" for line in job.lines)
        items.append(f'<li class="{"ok" if job.ok else "error"}">{e(job.describe())} by {e(job.who)}: '
                     f'{e(job.summary)}{f"<ul>{lines}</ul>" if lines else ""}</li>')
    return f'<h2>Jobs</h2><ul class="jobs">{"".join(items)}</ul>' if items else ""


def _filters(letters, pool, exception, older, newer) -> str:
    pools = sorted({letter["pool"] for letter in letters} | ({pool} if pool else set()))
    exceptions = sorted({letter["exception"] for letter in letters} | ({exception} if exception else set()))
    pool_options = "".join(f'<option value="{e(name)}"{" selected" if name == pool else ""}>{e(name)}</option>'
                           for name in pools)
    exception_options = "".join(
        f'<option value="{e(name)}"{" selected" if name == exception else ""}>{e(name)}</option>'
        for name in exceptions)
    return (f'<form method="get" action="/dead" class="filters"><label>pool <select name="pool"><option value="">'
            f'all</option>{pool_options}</select></label> <label>exception <select name="exception"><option '
            f'value="">all</option>{exception_options}</select></label> <label>older than <input name="older_than" '
            f'size="5" value="{e(older)}" placeholder="10m"></label> <label>newer than <input name="newer_than" '
            f'size="5" value="{e(newer)}" placeholder="1d"></label> <button type="submit">Filter</button></form>')


def _row(letter: dict, now: float) -> str:
    error = letter["error"]
    error = error if len(error) <= ERROR_SHOWN else error[:ERROR_SHOWN - 1] + "…"
    link = f'/dead/letter?pool={e(_quote(letter["pool"]))}&amp;id={e(_quote(letter["id"]))}'
    return (f'<tr><td><input type="checkbox" name="id" value="{e(letter["id"])}" aria-label="select"></td>'
            f'<td>{e(letter["pool"])}</td><td class="id"><a href="{link}">{e(letter["id"])}</a></td>'
            f'<td>{age_text(_age(letter, now))}</td><td>{e(str(letter["attempts"] or "?"))}</td>'
            f'<td>{letter["body_bytes"]}</td><td>{e(letter["exception"])}</td><td>{e(error)}</td></tr>')


def _quote(value: str) -> str:
    return quote(value, safe="")


def _age(letter: dict, now: float):
    return None if letter["failed_epoch"] is None else max(0.0, now - letter["failed_epoch"])


def _within(letter: dict, now: float, older, newer) -> bool:
    seconds = _age(letter, now)
    if older is not None and (seconds is None or seconds <= older):
        return False
    return newer is None or (seconds is not None and seconds < newer)


def _one(query: dict, name: str) -> str:
    return (query.get(name) or [""])[0]
