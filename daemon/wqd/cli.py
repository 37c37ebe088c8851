"""The ``wqd`` command: the only module that prints to the user and picks exit codes."""

import argparse
import json
import os
import sys

import pika.exceptions

import wqd
from wqd import config as config_module
from wqd import errors, logs
from wqd import handlers as handlers_module
from wqd.amqp import BrokerUnavailable, describe_error
from wqd.publisher import PublishError, publish_lines
from wqd.status import format_status, gather_status

# Exit codes (sysexits.h), so supervisors can tell a bad config from a crash.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69  # a one-shot command cannot reach the broker
EXIT_CONFIG = 78       # the configuration (or a handler import) is wrong: do not restart


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        sys.exit(EXIT_FAILURE)
    sys.exit(args.func(args))


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
    publish = add("publish", cmd_publish, "publish persistent messages with publisher confirms")
    publish.add_argument("--url", help="broker URL (instead of the config's broker.url)")
    publish.add_argument("--queue", help="target queue (default: the config's first pool)")
    publish.add_argument("--transient", action="store_true", help="publish non-persistent messages")
    publish.add_argument("--header", action="append", default=[], metavar="K=V", help="add a header")
    publish.add_argument("messages", nargs="*", metavar="MESSAGE", help="message bodies; '-' or none: stdin lines")
    status = add("status", cmd_status, "show queues and workers; works whether or not wqd runs")
    status.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _load(args, import_handlers: bool):
    """Config (and handlers), or print the error and return the exit code."""
    path = args.config or config_module.default_path()
    try:
        config = config_module.load(path)
        if import_handlers:
            if os.getcwd() not in sys.path:  # like gunicorn: handlers may live in the current directory
                sys.path.insert(0, os.getcwd())
            return config, handlers_module.load_all(config)
        return config, None
    except config_module.ConfigError as exc:
        print(f"wqd: configuration error:\n{exc}", file=sys.stderr)
        return None, EXIT_CONFIG


def cmd_check(args) -> int:
    config, handlers = _load(args, import_handlers=True)
    if config is None:
        return handlers
    pools = ", ".join(f"{p.name} ({p.workers} x {p.handler} on {p.queue})" for p in config.pools)
    brokers = ", ".join(config_module.redact_url(url) for url in config.broker.urls)
    print(f"{config.path}: OK; broker {brokers}; pools: {pools}")
    return EXIT_OK


def cmd_run(args) -> int:
    from wqd.master import Master  # imported here: only `run` needs the process machinery

    config, handlers = _load(args, import_handlers=True)
    if config is None:
        return handlers
    logs.setup(config.logging.level, config.logging.format)
    try:
        master = Master(config, handlers)
        return master.run()
    except errors.ConfigError as exc:
        print(f"wqd: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        if exc.filename is None and config.metrics.listen and exc.errno in (98, 99, 13):
            print(f"wqd: configuration error:\n{config.path}: metrics.listen: cannot listen on "
                  f"{config.metrics.listen}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
        raise


def cmd_publish(args) -> int:
    if args.url:
        config = None
        try:
            broker = config_module.BrokerConfig(urls=config_module.broker_urls(args.url.split(",")))
        except ValueError as exc:
            print(f"wqd publish: --url: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    else:
        config, error = _load(args, import_handlers=False)
        if config is None:
            return error
        broker = config.broker
    pool = None
    if config is not None:
        pool = next((p for p in config.pools if args.queue in (None, p.queue)), None)
    queue = args.queue or (pool.queue if pool else None)
    if not queue:
        print("wqd publish: --queue is required with --url", file=sys.stderr)
        return EXIT_FAILURE
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"wqd publish: --header expects K=V, got {item!r}", file=sys.stderr)
            return EXIT_FAILURE
        headers[key] = value
    messages = args.messages if args.messages and args.messages != ["-"] else _stdin_lines()
    try:
        for body in publish_lines(broker, queue, pool, messages, headers, persistent=not args.transient):
            print(f" [x] Sent {body!r}", flush=True)
    except PublishError as exc:
        print(f"wqd publish: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


def _stdin_lines():
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line:
            yield line


def cmd_status(args) -> int:
    config, error = _load(args, import_handlers=False)
    if config is None:
        return error
    try:
        status = gather_status(config)
    except BrokerUnavailable as exc:
        print(f"wqd status: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (pika.exceptions.AMQPError, OSError) as exc:
        print(f"wqd status: {describe_error(exc, config.broker.url)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK
