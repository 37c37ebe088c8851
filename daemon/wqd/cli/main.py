"""The ``wqd`` command: the only module that prints to the user and picks exit codes."""

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time

import wqd
from wqd import config as config_module
from wqd import errors, logs
from wqd.broker import amqp, dead_letters, queues
from wqd.broker.dead_letters import printable, quoted
from wqd.cli.publish import declare_config, publish_lines, utf8_body
from wqd.cli.status import format_status, gather_status
from wqd.handlers import code_version
from wqd.handlers import loading as handlers_module
from wqd.publishing.delays import MAX_DELAY

EXIT_OK = 0
# Any failure the table below does not name.
EXIT_FAILURE = 1
# The exit code of each failure (sysexits.h), so a supervisor can tell a bad
# configuration (do not restart until it is fixed) from an unreachable broker
# (try again later). The first class the error is an instance of wins.
EXIT_CODES = (
    (errors.ConfigError, os.EX_CONFIG),
    (errors.BrokerUnavailable, os.EX_UNAVAILABLE),
    (errors.InputError, os.EX_DATAERR),
)
# A command whose reader went away (`wqd dead list --json | head`) ends as one
# killed by SIGPIPE would: the shell's 128 + 13.
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE
# Why binding metrics.listen can fail that the configuration can fix.
_LISTEN_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        sys.exit(EXIT_FAILURE)
    sys.exit(run_command(args))


def run_command(args) -> int:
    """Run one command; a failure becomes one message on stderr and its exit code."""
    try:
        return args.func(args)
    except errors.WqdError as exc:
        print(failure_message(args.command, exc), file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        # Quietly: stdout goes to /dev/null, so the interpreter's last flush has nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED


def exit_code(exc: BaseException) -> int:
    for error_class, code in EXIT_CODES:
        if isinstance(exc, error_class):
            return code
    return EXIT_FAILURE


def failure_message(command: str, exc: errors.WqdError) -> str:
    """A configuration error lists its problems under one heading (one per line);
    any other failure is one line naming the command."""
    if isinstance(exc, errors.ConfigError):
        return f"wqd: configuration error:\n{exc}"
    return f"wqd {command}: {exc}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wqd", description=wqd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"wqd {wqd.__version__}")
    commands = parser.add_subparsers(dest="command")

    def add(name, func, help_text):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-c", "--config", default=None,
                             help="YAML config (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
        command.set_defaults(func=func)
        return command

    add("run", cmd_run, "run the daemon in the foreground")
    check = add("check", cmd_check, "validate the config and import the handlers")
    check.add_argument("--broker", action="store_true",
                       help="also compare each pool's queues on the broker with what wqd declares (creates nothing); "
                            "exit 78 on a difference")
    publish = add("publish", cmd_publish, "publish persistent messages with publisher confirms; a message "
                  "that is not UTF-8 or larger than the broker takes stops the run with exit 65 (those "
                  "before it were sent, it and those after it are not)")
    publish.add_argument("--url", help="broker URL (instead of the config's broker.url), without its password: "
                         "that comes from $WQD_BROKER_PASSWORD")
    publish.add_argument("--queue", help="target queue (default: the config's first pool)")
    publish.add_argument("--transient", action="store_true", help="publish non-persistent messages")
    publish.add_argument("--header", action="append", default=[], metavar="K=V", help="add a header")
    publish.add_argument("--delay", type=_delay, metavar="SECONDS",
                         help="deliver no earlier than SECONDS from now (whole seconds, up to 24 days)")
    publish.add_argument("messages", nargs="*", metavar="MESSAGE", help="message bodies; '-' or none: stdin lines")
    add("declare", cmd_declare, "declare every pool's queues as the pool will (what the publishing library, "
        "which never declares a work queue, needs before wqd first runs)")
    status = add("status", cmd_status, "show queues and workers; works whether or not wqd runs")
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_dead_commands(add("dead", None, "inspect, replay or purge dead-lettered messages; works whether "
                                         "or not wqd runs"))
    return parser


def _add_dead_commands(dead) -> None:
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
    show.add_argument("--max-bytes", type=_non_negative, default=4096, metavar="N",
                      help="show at most N bytes of the body (default 4096)")
    replay = add("replay", cmd_dead_replay, "put dead messages back on their work queue, as first attempts")
    replay.add_argument("ids", nargs="*", metavar="ID", help="message ids (as `wqd dead list` shows them)")
    replay.add_argument("--all", action="store_true", help="every dead message (of --exception, if given)")
    replay.add_argument("--exception", metavar="NAME", action="append", default=[],
                        help="only messages that failed with this exception type (repeated: any of them)")
    replay.add_argument("--limit", type=_non_negative, metavar="N", help="replay at most N messages")
    purge = add("purge", cmd_dead_purge, "delete dead messages for good")
    purge.add_argument("--yes", action="store_true", help="yes, delete them")
    purge.add_argument("--older-than", type=_non_negative, metavar="SECONDS",
                       help="only messages that failed more than SECONDS ago")


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_DELAY:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 0 to {MAX_DELAY}, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _load_config(args):
    """The config the command names; raise ConfigError."""
    return config_module.load(args.config or config_module.default_path())


def _import_handlers(config):
    """Every pool's handler, and the version of the code they were imported
    from (the modules their import added); raise ConfigError."""
    if os.getcwd() not in sys.path:  # like gunicorn: handlers may live in the current directory
        sys.path.insert(0, os.getcwd())
    before = set(sys.modules)
    handlers = handlers_module.load_all(config)
    return handlers, code_version.imported_since(before)


def cmd_check(args) -> int:
    config = _load_config(args)
    _import_handlers(config)
    pools = ", ".join(f"{p.name} ({p.workers} x {p.handler} on {p.queue})" for p in config.pools)
    brokers = ", ".join(config_module.redact_url(url) for url in config.broker.urls)
    tracing = ""
    if config.tracing.enabled:
        from wqd.tracing import destination  # imported only when tracing is enabled
        tracing = f"; spans to {destination()}"
    print(f"{config.path}: OK; broker {brokers}; pools: {pools}{tracing}")
    return _check_broker(config) if args.broker else EXIT_OK


def _check_broker(config) -> int:
    """`wqd check --broker`: each pool's queues against what wqd would declare."""
    connection, _ = amqp.connect_any(config.broker, name="wqd check")
    try:
        version = amqp.server_version(connection)[1]
        found = [line for pool in config.pools for line in queues.compare_pool_queues(connection, pool, version)]
    finally:
        if connection.is_open:
            connection.close()
    for line, _ in found:
        print(line)
    differences = [line for line, differs in found if differs]
    if differences:
        raise errors.ConfigError(f"{len(differences)} queue(s) differ from what wqd declares: see above")
    return EXIT_OK


def cmd_run(args) -> int:
    from wqd.master.arbiter import Master  # imported here: only `run` needs the process machinery

    config = _load_config(args)
    handlers, code = _import_handlers(config)
    logs.setup(config.logging.level, config.logging.format)
    try:
        Master(config, handlers, code).run()
    except (OSError, OverflowError) as exc:  # from binding the HTTP endpoint, the one socket the master opens itself
        cannot_listen = isinstance(exc, (socket.gaierror, OverflowError)) or (
            exc.filename is None and exc.errno in _LISTEN_ERRNOS)
        if config.metrics.listen and cannot_listen:
            raise errors.ConfigError(f"{config.path}: metrics.listen: cannot listen on "
                                     f"{config.metrics.listen}: {getattr(exc, 'strerror', None) or exc}") from None
        raise
    return EXIT_OK


def cmd_publish(args) -> int:
    if args.url:
        config = None
        broker = config_module.BrokerConfig(urls=_url_option(args.url))
    else:
        config = _load_config(args)
        broker = config.broker
    pool = None
    if config is not None:
        pool = next((p for p in config.pools if args.queue in (None, p.queue)), None)
    queue = args.queue or (pool.queue if pool else None)
    if not queue:
        raise errors.WqdError("--queue is required with --url")
    headers = {}
    for number, item in enumerate(args.header, 1):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.WqdError(f"--header expects K=V, got {item!r}")
        utf8_body(os.fsencode(item), f"--header {number}", "nothing was sent")
        headers[key] = value
    if args.messages and args.messages != ["-"]:
        # Arguments the OS gave as bytes that are not UTF-8 came in as surrogates.
        messages = [utf8_body(os.fsencode(text), f"message argument {number}", "nothing was sent")
                    for number, text in enumerate(args.messages, 1)]
    else:
        messages = sys.stdin.buffer if sys.stdin else []
    tracing = contextlib.nullcontext()
    if config is not None and config.tracing.enabled:
        from wqd.tracing import PublishTracing  # imported only when tracing is enabled
        tracing = PublishTracing(headers)
    with tracing:
        provider = getattr(tracing, "provider", None)
        for body in publish_lines(broker, queue, pool, messages, headers, persistent=not args.transient,
                                  delay=args.delay, tracer_provider=provider):
            print(f" [x] Sent {body.decode()!r}", flush=True)
    return EXIT_OK


def cmd_declare(args) -> int:
    config = _load_config(args)
    for pool, queue_names in declare_config(config):
        print(f"pool {pool.name}: declared {', '.join(queue_names)}", flush=True)
    return EXIT_OK


def _url_option(text: str) -> tuple:
    """--url's URLs, their password from $WQD_BROKER_PASSWORD: one on the
    command line is refused, as every local user can read it there."""
    urls = config_module.split_urls(text)
    variable = config_module.BROKER_PASSWORD_VARIABLE
    if any(config_module.url_password(url) for url in urls):
        raise errors.WqdError(
            f"--url holds a password ({', '.join(map(config_module.redact_url, urls))}), and every user of this "
            f"machine can read a command line (ps, /proc/PID/cmdline); nothing was sent. Give the URL without it "
            f"(amqp://USER@HOST/VHOST) and the password in ${variable}, or use -c CONFIG (whose broker.url "
            f"$WQD_BROKER_URL overrides); and change that password if others can log in here")
    password = os.environ.get(variable)
    if not password and any("@" in url for url in urls):
        raise errors.WqdError(f"--url names a user, and ${variable}, which gives its password, is not set")
    try:
        return config_module.broker_urls([config_module.with_password(url, password) for url in urls]
                                         if password else urls)
    except ValueError as exc:
        raise errors.WqdError(f"--url: {exc}") from None


def cmd_status(args) -> int:
    config = _load_config(args)
    status = gather_status(config)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


# --------------------------------------------------------------------------
# wqd dead


def cmd_dead_list(args) -> int:
    config = _load_config(args)
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
        rows.append((letter.pool, letter.id, _age(letter.age(now)), str(letter.attempts or "?"), str(len(letter.body)),
                     printable(letter.exception), printable(_one_line(letter.error, 100))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def cmd_dead_show(args) -> int:
    config = _load_config(args)
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
    config = _load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    named = set()  # the IDs given that name a letter read

    def select(letter) -> bool:
        named.update(wanted for wanted in args.ids if letter.named(wanted))
        return letter.matches(args.ids, args.exception)

    replayed, refused = 0, []
    with dead_letters.DeadLetterQueues(config) as queues:
        for pool in pools:
            limit = None if args.limit is None else args.limit - replayed
            for letter, refusal in queues.replay(pool, select, limit):
                if refusal is None:
                    replayed += 1
                    print(printable(f"Replayed {letter.id} ({letter.exception}) to {pool.queue}"), flush=True)
                else:
                    refused.append((letter.queue, refusal))
                    print(printable(f"Not replayed {letter.id} ({letter.exception}): {refusal.reason}; it is "
                                    f"still in {pool.dead_letter_queue}"), flush=True)
    if refused:
        raise _replay_incomplete(replayed, refused)
    missing = [wanted for wanted in args.ids if wanted not in named]
    if missing and (args.limit is None or replayed < args.limit):  # a limit reached leaves letters unread
        raise errors.WqdError(f"replayed {_messages(replayed)}; not found in "
                              f"{', '.join(p.dead_letter_queue for p in pools)}: "
                              f"{', '.join(quoted(wanted) for wanted in missing)}")
    print(f"Replayed {_messages(replayed)}.")
    return EXIT_OK


def _messages(count: int) -> str:
    return f"{count} message{'' if count == 1 else 's'}"


def _replay_incomplete(replayed: int, refused: list) -> errors.WqdError:
    """The error that ends a replay the broker did not take every copy of
    (``refused``: (dead-letter queue, Refusal) pairs): exit 69 when it nacked
    one (as `wqd publish`), else 1 (a copy no queue took, as a missing work queue)."""
    nacked = sum(1 for _, refusal in refused if refusal.nacked)
    kinds = ", ".join(f"{count} {kind}" for count, kind in ((nacked, "nacked"), (len(refused) - nacked, "returned"))
                      if count)
    queues = ", ".join(dict.fromkeys(queue for queue, _ in refused))
    error = errors.BrokerUnavailable if nacked else errors.WqdError
    were, are = ("was", "is") if len(refused) == 1 else ("were", "are")
    return error(f"replayed {replayed} of {replayed + len(refused)} messages; {len(refused)} {were} refused by the "
                 f"broker ({kinds}: see the lines above) and {are} still in {queues}")


def cmd_dead_purge(args) -> int:
    if not args.yes:
        raise errors.WqdError("purge deletes dead messages for good: add --yes to confirm "
                              "(`wqd dead list` shows what would go)")
    config = _load_config(args)
    pools = dead_letters.pools_with_dead_letters(config, args.pool)
    now = time.time()

    def old_enough(letter) -> bool:
        if args.older_than is None:
            return True
        age = letter.age(now)
        return age is not None and age > args.older_than

    deleted = 0
    with dead_letters.DeadLetterQueues(config) as queues:
        for pool in pools:
            deleted += sum(1 for _ in queues.delete(pool, old_enough))
    print(f"Deleted {deleted} dead message{'' if deleted == 1 else 's'}.")
    return EXIT_OK


def _age(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub_unit}"
    return f"{seconds}s"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(letter, now: float, max_bytes: int) -> str:
    """`wqd dead show`'s text for one message."""
    lines = [f"Message {letter.id} (pool {letter.pool}, dead-letter queue {letter.queue})",
             f"  exception: {letter.exception}: {letter.error}",
             f"  attempts: {letter.attempts if letter.attempts is not None else '?'}, "
             f"age: {_age(letter.age(now))}", "Properties:"]
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
