"""`wqd outbox init | list`: its arguments, and the text it prints (outbox/commands.py does the database's side)."""

import argparse
import json

from wqd.cli.common import EXIT_OK, load_config
from wqd.outbox import commands, schema


def add_commands(outbox) -> None:
    outbox.set_defaults(func=lambda args: outbox.error("choose init or list"))
    subcommands = outbox.add_subparsers(dest="outbox_command")
    for name, func, help_text in (("init", cmd_outbox_init, "create the outbox table (idempotent)"),
                                  ("list", cmd_outbox_list, "rows waiting, and rows set aside with the reason")):
        command = subcommands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-c", "--config", default=argparse.SUPPRESS,
                             help="YAML config (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
        command.set_defaults(func=func)
        if name == "init":
            command.add_argument("--sql", action="store_true",
                                 help="print the SQL instead (for a migration tool); connects to nothing")
        else:
            command.add_argument("--json", action="store_true", help="print JSON")


def cmd_outbox_init(args) -> int:
    config = load_config(args)
    outbox = commands.outbox_of(config)
    if args.sql:
        print(schema.create_sql(outbox.table), end="")
        return EXIT_OK
    table = commands.init(config)
    print(f"outbox table {table} is ready (schema version {schema.VERSION})")
    return EXIT_OK


def cmd_outbox_list(args) -> int:
    found = commands.listing(load_config(args))
    print(json.dumps(found, indent=2) if args.json else format_listing(found))
    return EXIT_OK


def format_listing(found: dict) -> str:
    lines = [f"outbox table {found['table']}: {found['waiting_count']} waiting, "
             f"{found['set_aside_count']} set aside (refused by the broker; not retried)"]
    for title, rows, count in (("WAITING", found["waiting"], found["waiting_count"]),
                               ("SET ASIDE", found["set_aside"], found["set_aside_count"])):
        if not rows:
            continue
        lines += ["", f"{title}  (oldest first{', first ' + str(len(rows)) if count > len(rows) else ''})"]
        for row in rows:
            text = " ".join(row["body"].split())
            line = f"  {row['id']:>8}  {row['message_id']}  {row['queue']}  {row['bytes']} bytes  " \
                   f"{row['age_seconds']:.1f}s old  {text[:commands.PREVIEW_BYTES]!r}"
            lines.append(line)
            if row["refused_reason"]:
                lines.append(f"            why: {row['refused_reason']}")
    return "\n".join(lines)
