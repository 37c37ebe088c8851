"""The ``wqd`` command: the only module that prints to the user and picks exit codes."""

import argparse
import errno
import json
import os
import socket
import sys

import wqd
from wqd import config as config_module
from wqd import errors, logs
from wqd import handlers as handlers_module
from wqd.publisher import publish_lines, utf8_body
from wqd.status import format_status, gather_status

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
    parser = argparse.ArgumentParser(prog="wqd", description=wqd.__doc__)
    parser.add_argument("--version", action="version", version=f"wqd {wqd.__version__}")
    commands = parser.add_subparsers(dest="command")

    def add(name, func, help_text):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-c", "--config", default=None,
                             help="YAML config (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
        command.set_defaults(func=func)
        return command

    add("run", cmd_run, "run the daemon in the foreground")
    add("check", cmd_check, "validate the config and import the handlers")
    publish = add("publish", cmd_publish, "publish persistent messages with publisher confirms; a message "
                  "that is not UTF-8 or larger than the broker takes stops the run with exit 65 (those "
                  "before it were sent, it and those after it are not)")
    publish.add_argument("--url", help="broker URL (instead of the config's broker.url)")
    publish.add_argument("--queue", help="target queue (default: the config's first pool)")
    publish.add_argument("--transient", action="store_true", help="publish non-persistent messages")
    publish.add_argument("--header", action="append", default=[], metavar="K=V", help="add a header")
    publish.add_argument("messages", nargs="*", metavar="MESSAGE", help="message bodies; '-' or none: stdin lines")
    status = add("status", cmd_status, "show queues and workers; works whether or not wqd runs")
    status.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _load(args, import_handlers: bool):
    """The config, and its handlers when ``import_handlers``; raise ConfigError."""
    config = config_module.load(args.config or config_module.default_path())
    if not import_handlers:
        return config, None
    if os.getcwd() not in sys.path:  # like gunicorn: handlers may live in the current directory
        sys.path.insert(0, os.getcwd())
    return config, handlers_module.load_all(config)


def cmd_check(args) -> int:
    config, _ = _load(args, import_handlers=True)
    pools = ", ".join(f"{p.name} ({p.workers} x {p.handler} on {p.queue})" for p in config.pools)
    brokers = ", ".join(config_module.redact_url(url) for url in config.broker.urls)
    print(f"{config.path}: OK; broker {brokers}; pools: {pools}")
    return EXIT_OK


def cmd_run(args) -> int:
    from wqd.master import Master  # imported here: only `run` needs the process machinery

    config, handlers = _load(args, import_handlers=True)
    logs.setup(config.logging.level, config.logging.format)
    try:
        Master(config, handlers).run()
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
        try:
            broker = config_module.BrokerConfig(urls=config_module.broker_urls(config_module.split_urls(args.url)))
        except ValueError as exc:
            raise errors.WqdError(f"--url: {exc}") from None
    else:
        config, _ = _load(args, import_handlers=False)
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
    for body in publish_lines(broker, queue, pool, messages, headers, persistent=not args.transient):
        print(f" [x] Sent {body.decode()!r}", flush=True)
    return EXIT_OK


def cmd_status(args) -> int:
    config, _ = _load(args, import_handlers=False)
    status = gather_status(config)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK
