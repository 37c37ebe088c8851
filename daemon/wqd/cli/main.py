"""The ``wqd`` command: the only module that prints to the user and picks exit codes."""

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import sys

import wqd
from wqd import config as config_module
from wqd import errors, logs
from wqd.broker import amqp, queues
from wqd.cli import dead, outbox
from wqd.cli.common import EXIT_OK, load_config
from wqd.cli.publish import declare_config, publish_lines, utf8_body
from wqd.cli.status import format_status, gather_status
from wqd.handlers import code_version
from wqd.handlers import loading as handlers_module
from wqd.publishing.delays import MAX_DELAY

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
    dead.add_commands(add("dead", None, "inspect, replay or purge dead-lettered messages; works whether "
                                         "or not wqd runs"))
    outbox.add_commands(add("outbox", None, "the PostgreSQL transactional outbox (the config's outbox section)"))
    return parser


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_DELAY:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 0 to {MAX_DELAY}, got {text!r}")
    return value


def _import_handlers(config):
    """Every pool's handler, and the version of the code they were imported
    from (the modules their import added); raise ConfigError."""
    if os.getcwd() not in sys.path:  # like gunicorn: handlers may live in the current directory
        sys.path.insert(0, os.getcwd())
    before = set(sys.modules)
    handlers = handlers_module.load_all(config)
    return handlers, code_version.imported_since(before)


def cmd_check(args) -> int:
    config = load_config(args)
    _import_handlers(config)
    pools = ", ".join(f"{p.name} ({p.workers} x {p.handler} on {p.queue})" for p in config.pools)
    brokers = ", ".join(config_module.redact_url(url) for url in config.broker.urls)
    tracing = ""
    if config.tracing.enabled:
        from wqd.config.otel import destination
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

    config = load_config(args)
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
        config = load_config(args)
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
    config = load_config(args)
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
    config = load_config(args)
    status = gather_status(config)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK
