"""The `cliproxy` command: the outermost shell. Subcommands parse arguments and call inwards.

    init           write a starter config (keys generated, one local vendor); never over a file
    serve          run the gateway
    check-config   validate the config file
    migrate        apply pending database migrations (--dry-run lists them)
    status         every configured pair and its state, from the config and the database file
    history        the audit history from the database file
    enable         make a pair routable again, through the running server's management API
    disable        disable a pair (optionally for a duration), through the management API
    demo           the gateway with two demo vendors, and what to try (first run)
    backup         a consistent copy of the database, safe while the server runs

`status` and `history` open the database read-only, so they work with the server stopped or
running. Formatting and state rules live in `cliproxy.cli.views` (pure); one module per command
group does the I/O (`serve`, `state`, `management`, `backup`, `demo`); this one parses the arguments.

Exit codes: 0 success; 1 the operation failed (database unreadable for status/history, server not
running or refused the call, port in use, database busy); 2 usage or configuration errors; 3 the
database cannot be used (a migration fails, the file is not a database or cannot be opened, its
schema is newer than this version). 2 and 3 are permanent: the systemd unit does not restart on them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import get_args

from cliproxy.cli.backup import cmd_backup
from cliproxy.cli.common import EXIT_CONFIG, EXIT_DATABASE
from cliproxy.cli.demo import cmd_demo, cmd_fake_upstream
from cliproxy.cli.management import KEY_ENV, cmd_disable, cmd_enable, default_url, duration_arg
from cliproxy.cli.serve import cmd_check_config, cmd_migrate, cmd_serve
from cliproxy.cli.starter import cmd_init
from cliproxy.cli.state import cmd_history, cmd_status, limit_arg, since_arg
from cliproxy.core.events import EventKind

__all__ = ["EXIT_CONFIG", "EXIT_DATABASE", "build_parser", "default_url", "installed_version", "main"]


def installed_version() -> str:
    """The version of the installed distribution (pyproject's `version`), from its metadata."""
    try:
        return metadata.version("cliproxy")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cliproxy",
        description="OpenAI-compatible LLM API gateway",
        epilog="Run `cliproxy COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"cliproxy {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", "-c", help="config file (default: $CLIPROXY_CONFIG or ./config.yaml)")
        p.set_defaults(handler=handler)
        return p

    add(
        "init",
        cmd_init,
        "write a starter config: keys generated, one local vendor (never over an existing file)",
        "Write a small, valid config to --config (default: $CLIPROXY_CONFIG or ./config.yaml): a client\n"
        "key and a management key generated for this install, the database beside the config, one local\n"
        "vendor (Ollama) and a hosted one commented out. The file is readable by its owner only. An\n"
        "existing file is never written over (exit 1).",
    )
    add("serve", cmd_serve, "run the gateway")
    add("check-config", cmd_check_config, "validate the config file and exit (non-zero on errors)")

    p = add(
        "migrate",
        cmd_migrate,
        "apply pending database migrations",
        "Apply the pending migrations to the config's `database` (created if missing), each in one\n"
        "transaction. The server also does this at start-up. A failing migration leaves the database\n"
        "as it was and exits 3.",
    )
    p.add_argument("--dry-run", action="store_true", help="list the pending migrations; change nothing")

    p = add(
        "status",
        cmd_status,
        "show every configured pair and its state",
        "Show every configured (vendor, model) pair and its state, from the config file and the\n"
        "database (opened read-only: works with the server stopped or running).\n\n"
        "states: enabled | auto-disabled | manually disabled | vendor off | no key;\n"
        "'enabled (expired, not yet recorded)' is a disable whose time is over that the server has\n"
        "not written back yet. Disabled pairs that are no longer configured are listed apart.\n\n"
        "${VAR}s of keys and secrets need not be set here: a key from an unset variable is shown\n"
        "as 'key from ${VAR}', not as 'no key'.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects (ISO times, seconds)")

    p = add(
        "history",
        cmd_history,
        "show the audit history (disables, enables, manual actions)",
        "Show the audit history from the database, newest first (opened read-only).",
    )
    p.add_argument("--vendor", help="only this vendor")
    p.add_argument("--model", help="only this model (the upstream name, as in the config's `name`)")
    p.add_argument("--kind", choices=get_args(EventKind), help="only this kind of event")
    p.add_argument(
        "--since", type=since_arg, metavar="WHEN", help="only events since WHEN: 30m, 24h, 7d, or an ISO date/time (UTC)"
    )
    p.add_argument("--limit", type=limit_arg, default=50, metavar="N", help="at most N events (default 50)")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects (ISO times, seconds)")

    p = add(
        "backup",
        cmd_backup,
        "write a consistent copy of the database (safe while the server runs)",
        "Copy the config's `database` to PATH with SQLite's online backup API: one consistent moment,\n"
        "WAL content included, while the server keeps writing (`cp` of a WAL database is not a backup).\n"
        "Refuses an existing PATH unless --force. To restore: stop the server, copy the backup over\n"
        "the database file, delete its -wal and -shm files, start the server.",
    )
    p.add_argument("path", metavar="PATH", help="the file to write")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")

    management = (
        "\n\nGoes through the running server's management API. The key comes from --key or\n"
        f"${KEY_ENV} (prefer the variable: other users can see command lines);\n"
        "the URL from --url or the config's host and port."
    )
    for name, handler, help, description in (
        (
            "enable",
            cmd_enable,
            "make a pair routable again (management API)",
            "Make a (vendor, model) pair routable again: clears an auto-disable, a manual disable or a rate\n"
            "limit. With --all [--vendor V] [--reason R]: every disable the server holds, in one call.",
        ),
        (
            "disable",
            cmd_disable,
            "disable a pair, for a while or until enabled (management API)",
            "Disable a (vendor, model) pair: for --duration, or until `cliproxy enable`.",
        ),
    ):
        p = add(name, handler, help, description + management)
        optional = "?" if name == "enable" else None  # `enable --all` names no pair
        p.add_argument("vendor", metavar="VENDOR", nargs=optional, help="the vendor's name in the config")
        p.add_argument("model", metavar="MODEL", nargs=optional, help="the model (upstream name or alias; may contain / and :)")
        if name == "enable":
            p.add_argument(
                "--all",
                action="store_true",
                help="instead of one pair: clear every automatic, timed manual and rate-limited disable "
                "(POST /api/models/enable-all); `enabled: false` in the config is left alone",
            )
            p.add_argument("--vendor", dest="all_vendor", metavar="V", help="with --all: only the pairs of vendor V")
            p.add_argument(
                "--reason",
                dest="all_reason",
                choices=("auto", "manual", "rate-limited"),
                help="with --all: only the disables of this reason",
            )
        if name == "disable":
            p.add_argument(
                "--duration",
                type=duration_arg,
                metavar="DURATION",
                help="for how long: 90s, 10m, 1h30m, 2d (default: until enabled)",
            )
        p.add_argument("--key", help=f"management key (default: ${KEY_ENV})")
        p.add_argument("--url", help="server URL (default: http://HOST:PORT from the config)")
        p.add_argument(
            "--timeout", type=duration_arg, default=10.0, metavar="SECONDS", help="give up after this long (default 10s)"
        )

    p = sub.add_parser(
        "demo",
        help="try cliproxy: the gateway with two demo vendors (fake upstreams); Ctrl-C stops it",
        description=(
            "Start the gateway on a generated config with two demo vendors served by the built-in\n"
            "fake upstream, in this one process, and print commands to try: a chat request, a stream,\n"
            "failover, auto-disable, status, history, recovery. Ctrl-C (or SIGTERM) stops everything.\n"
            "The config and the database stay in --dir, so status and history work afterwards."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", default="cliproxy-demo", help="where the config and the database go (default ./cliproxy-demo)")
    p.add_argument("--port", type=int, default=8399, help="the gateway's port (default 8399)")
    p.add_argument("--primary-port", type=int, default=9101, help="the demo vendor primary's port (default 9101)")
    p.add_argument("--backup-port", type=int, default=9102, help="the demo vendor backup's port (default 9102)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "fake-upstream",
        help="run the fake OpenAI-compatible upstream with fault injection (drills, demos, benchmarks)",
        add_help=False,  # its own parser answers --help
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_fake_upstream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-upstream"]:
        # Its options belong to its own parser (argparse cannot hand a sub-command's whole tail over).
        return cmd_fake_upstream(argparse.Namespace(args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cliproxy history | head`): no traceback, and none at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
