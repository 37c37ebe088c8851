"""`wqd dead list | show | replay | purge`: its arguments, and the text it
prints of dead letters (broker/dead_letters.py does the broker's side)."""

import argparse
import json
import time

from wqd import errors
from wqd.broker import dead_letter_actions, dead_letters
from wqd.broker.dead_letters import age_text, printable, quoted
from wqd.cli.common import EXIT_OK, load_config, non_negative


def add_commands(dead) -> None:
    dead.set_defaults(func=lambda args: dead.error("choose list, show, replay or purge"))
    commands = dead.add_subparsers(dest="dead_command")

    def add(name, func, help_text):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-c", "--config", default=argparse.SUPPRESS,
                             help="YAML config (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
        command.add_argument("--pool", help="only this pool (default: every pool with a dead-letter queue)")
        command.set_defaults(func=func)
        return command

    listing = add("list", cmd_dead_list, "one line per dead message (the queue is left as it was)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = add("show", cmd_dead_show, "a dead message's headers, traceback and body")
    show.add_argument("id", metavar="ID", help="message id (as `wqd dead list` shows it), or its start when that "
                                               "names one id")
    show.add_argument("--max-bytes", type=non_negative, default=4096, metavar="N",
                      help="show at most N bytes of the body (default 4096)")
    replay = add("replay", cmd_dead_replay, "put dead messages back on their work queue, as first attempts")
    replay.add_argument("ids", nargs="*", metavar="ID", help="message ids (as `wqd dead list` shows them)")
    replay.add_argument("--all", action="store_true", help="every dead message (of --exception, if given)")
    replay.add_argument("--exception", metavar="NAME", action="append", default=[],
                        help="only messages that failed with this exception type (repeated: any of them)")
    replay.add_argument("--limit", type=non_negative, metavar="N", help="replay at most N messages")
    purge = add("purge", cmd_dead_purge, "delete dead messages for good")
    purge.add_argument("--yes", action="store_true", help="yes, delete them")
    purge.add_argument("--older-than", type=non_negative, metavar="SECONDS",
                       help="only messages that failed more than SECONDS ago")


def cmd_dead_list(args) -> int:
    config = load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    with dead_letters.DeadLetterQueues(config) as queues:
        letters = [letter for pool in pools for letter in queues.browse(pool)]
    now = time.time()
    if args.json:
        print(json.dumps([letter.summary(now) for letter in letters], indent=2))
        return EXIT_OK
    if not letters:
        print(f"No dead letters in {', '.join(p.dead_letter_queue for p in pools) or '(no dead-letter queue)'}.")
        return EXIT_OK
    rows = [("POOL", "ID", "AGE", "ATTEMPTS", "BYTES", "EXCEPTION", "ERROR")]
    for letter in letters:
        rows.append((letter.pool, letter.id, age_text(letter.age(now)), str(letter.attempts or "?"), str(len(letter.body)),
                     printable(letter.exception), printable(_one_line(letter.error, 100))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def cmd_dead_show(args) -> int:
    config = load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    with dead_letters.DeadLetterQueues(config) as queues:
        letters = [letter for pool in pools for letter in queues.browse(pool)]
    found = dead_letters.named_by(letters, args.id)
    if not found:
        raise errors.WqdError(f"no dead message {quoted(args.id)} in {', '.join(p.dead_letter_queue for p in pools)}")
    now = time.time()
    for number, letter in enumerate(found):
        if number:
            print()
        print(_describe(letter, now, args.max_bytes))
    return EXIT_OK


def cmd_dead_replay(args) -> int:
    if args.ids and args.all:
        raise errors.WqdError("give message ids or --all, not both")
    if not (args.ids or args.all or args.exception):
        raise errors.WqdError("name the messages to replay: IDs, --exception NAME, or --all")
    config = load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    with dead_letters.DeadLetterQueues(config) as queues:
        replayed = dead_letter_actions.replay(queues, pools, args.ids, args.exception, args.limit,
                                              lambda line: print(line, flush=True))
    error = replayed.error(pools, args.limit)
    if error is not None:
        raise error
    print(f"Replayed {dead_letter_actions.messages(replayed.count)}.")
    return EXIT_OK


def cmd_dead_purge(args) -> int:
    if not args.yes:
        raise errors.WqdError("purge deletes dead messages for good: add --yes to confirm "
                              "(`wqd dead list` shows what would go)")
    config = load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    with dead_letters.DeadLetterQueues(config) as queues:
        deleted = dead_letter_actions.purge(queues, pools, args.older_than)
    print(dead_letter_actions.purged(deleted))
    return EXIT_OK



def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(letter, now: float, max_bytes: int) -> str:
    """`wqd dead show`'s text for one message."""
    lines = [f"Message {letter.id} (pool {letter.pool}, dead-letter queue {letter.queue})",
             f"  exception: {letter.exception}: {letter.error}",
             f"  attempts: {letter.attempts if letter.attempts is not None else '?'}, "
             f"age: {age_text(letter.age(now))}", "Properties:"]
    properties = letter.properties
    for name in ("message_id", "correlation_id", "content_type", "content_encoding", "timestamp", "type",
                 "app_id", "priority", "delivery_mode", "expiration", "reply_to"):
        value = getattr(properties, name)
        if value is not None:
            lines.append(f"  {name}: {dead_letters.text(value)}")
    lines.append("Headers:")
    headers = sorted(((dead_letters.text(name), value) for name, value in letter.headers.items()),
                     key=lambda header: header[0])  # names of bytes and str: compared as shown
    for name, value in headers:
        if name != "x-wqd-traceback":
            lines.append(f"  {name}: {dead_letters.text(value)}")
    traceback_text = letter.header("x-wqd-traceback")
    if traceback_text:
        lines.append("Traceback:")
        lines.extend("  " + line for line in traceback_text.rstrip("\n").splitlines())
    body = letter.body[:max_bytes]
    cut = f", first {len(body)} shown" if len(body) < len(letter.body) else ""
    text = _as_text(body, cut=bool(cut))
    lines.append(f"Body ({len(letter.body)} bytes{cut}, {'text' if text is not None else 'hex'}):")
    lines = [printable(line) for line in lines]  # what a publisher or a handler wrote may hold escape sequences
    if text is not None:
        lines.append(text)
    else:
        lines.extend(f"  {offset:08x}  {body[offset:offset + 16].hex(' ')}" for offset in range(0, len(body), 16))
    return "\n".join(lines)


def _as_text(body: bytes, cut: bool):
    """The body as text, or None when it is binary (not UTF-8, or control
    characters); a cut body may end inside a character."""
    for trim in range(4 if cut else 1):
        try:
            text = body[:len(body) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
        readable = all(char.isprintable() or char in "\n\t" for char in text.replace("\r\n", "\n"))
        return text if readable else None
    return None
