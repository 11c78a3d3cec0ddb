"""The `cliproxy` command: the outermost shell. Subcommands parse arguments and call inwards.

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
running. Formatting and state rules live in `cliproxy.cli_views` (pure); this module does the I/O.

Exit codes: 0 success; 1 the operation failed (database unreadable for status/history, server not
running or refused the call, port in use, database busy); 2 usage or configuration errors; 3 the
database cannot be used (a migration fails, the file is not a database or cannot be opened, its
schema is newer than this version). 2 and 3 are permanent: the systemd unit does not restart on them.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, get_args

from cliproxy import cli_views
from cliproxy.core.config import Config
from cliproxy.core.events import EventKind
from cliproxy.core.routing import RoutingTable
from cliproxy.services.config_loader import ConfigError, LenientConfig, load_config, load_config_leniently
from cliproxy.services.store import (
    MigrationError,
    apply_migrations,
    backup,
    pending_migrations,
    read_disabled,
    read_events,
)

__all__ = ["build_parser", "default_url", "installed_version", "main"]

log = logging.getLogger("cliproxy")

DEFAULT_CONFIG = "config.yaml"

#: A usage or config error (argparse exits 2 too): restarting cannot fix it.
EXIT_CONFIG = 2
#: The database cannot be used: restarting cannot fix it either (the unit's RestartPreventExitStatus).
EXIT_DATABASE = 3


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("CLIPROXY_CONFIG") or DEFAULT_CONFIG


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _load_leniently_or_exit(path: str) -> LenientConfig:
    """For the commands that need only the database, host and port: the `${VAR}`s of keys and
    secrets may be unset in the operator's shell (the unit reads them from its own file)."""
    try:
        return load_config_leniently(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = _load_or_exit(path)
    pairs = sum(len(v.models) for v in config.vendors)
    print(f"{path}: OK ({len(config.vendors)} vendor(s), {pairs} pair(s))")
    return 0


# SQLite's codes for "another connection holds the lock": waiting and retrying can fix those.
_TRANSIENT_SQLITE_ERRORS = {"SQLITE_BUSY", "SQLITE_LOCKED"}


def _database_fault_status(exc: BaseException) -> int:
    """EXIT_DATABASE for a database fault that stays until someone acts, 1 for a busy database."""
    cause: BaseException | None = exc
    while cause is not None:
        if getattr(cause, "sqlite_errorname", None) in _TRANSIENT_SQLITE_ERRORS:
            return 1
        cause = cause.__cause__
    return EXIT_DATABASE


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as error:
        # One line, so the journal shows the whole reason next to the unit's failure.
        problems = "; ".join(error.problems)
        return _fail("serve", f"invalid configuration in {path}: {problems}", EXIT_CONFIG)
    db = _database(config)
    # The app migrates at start-up too (a no-op after this); doing it here first turns a database
    # that cannot be used into one line and a status systemd will not restart on, not a traceback.
    try:
        apply_migrations(db)
    except MigrationError as exc:
        return _fail("serve", str(exc), _database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return _fail("serve", f"cannot open database {db}: {exc}", _database_fault_status(exc))
    from cliproxy.server import serve

    return asyncio.run(serve(config))


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")

#: The management key, unless --key is given.
KEY_ENV = "CLIPROXY_MANAGEMENT_KEY"


def _fail(command: str, message: str, code: int = 1) -> int:
    """One line on stderr, argparse style, and the exit code to return."""
    print(f"cliproxy {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _database(config: Config) -> Path:
    """The database file, resolved like the server does (relative to the working directory)."""
    return Path(config.database).resolve()


class _Unreadable(Exception):
    pass


def _read(db: Path, reader: Callable[[Path], _T]) -> _T:
    try:
        return reader(db)
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            raise _Unreadable(f"database {db} has no schema yet ({exc}); run `cliproxy migrate`") from None
        if "no such column" in str(exc):  # written by an older version; the server migrates it at start-up
            raise _Unreadable(f"database {db} has an older schema ({exc}); run `cliproxy migrate`") from None
        raise _Unreadable(f"cannot read database {db}: {exc}") from None
    except OSError as exc:
        raise _Unreadable(f"cannot read database {db}: {exc}") from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------------------------
# migrate
# --------------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    config = _load_or_exit(_config_path(args))
    db = _database(config)
    try:
        if args.dry_run:
            pending = pending_migrations(db)
            if not pending:
                print(f"{db}: up to date")
            else:
                print(f"{db}: {len(pending)} pending migration(s) (not applied):")
                for name in pending:
                    print(f"  {name}")
            return 0
        applied = apply_migrations(db)
    except MigrationError as exc:
        return _fail("migrate", str(exc), _database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return _fail("migrate", f"cannot migrate database {db}: {exc}", _database_fault_status(exc))
    if not applied:
        print(f"{db}: up to date")
    else:
        for name in applied:
            print(f"{db}: applied {name}")
    return 0


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load_leniently_or_exit(_config_path(args))
    config = loaded.config
    db = _database(config)
    now = time.time()
    notes: list[str] = []
    if db.is_file():
        try:
            disabled = _read(db, read_disabled)
        except _Unreadable as exc:
            return _fail("status", str(exc))
    else:
        disabled = []
        notes.append(f"no database at {db}: nothing is disabled (the server creates it at start-up)")
    unset_keys = {v.name: loaded.unset_key_variables(i) for i, v in enumerate(config.vendors)}
    configured, orphans = cli_views.pair_statuses(RoutingTable(config), disabled, now, unset_keys)
    if args.json:
        _print_json(cli_views.status_json([*configured, *orphans]))
        for note in notes:
            print(note, file=sys.stderr)
        return 0
    print(f"database {db}, times in UTC, now {cli_views.iso(now)}")
    print()
    if configured:
        print(cli_views.status_table(configured))
        print()
    print(cli_views.summary(configured))
    if orphans:
        print()
        print("Disabled in the database but not in the config (kept and ignored by the server):")
        print(cli_views.status_table(orphans))
    for note in notes:
        print(note)
    return 0


# --------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------


def _since_arg(text: str) -> float:
    try:
        return cli_views.parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> float:
    try:
        return cli_views.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_history(args: argparse.Namespace) -> int:
    config = _load_leniently_or_exit(_config_path(args)).config
    db = _database(config)
    if not db.is_file():
        note = f"no database at {db}: no history yet"
        if args.json:
            _print_json([])
            print(note, file=sys.stderr)
        else:
            print(note)
        return 0
    try:
        events = _read(
            db,
            lambda path: read_events(
                path, vendor=args.vendor, model=args.model, kind=args.kind, since=args.since, limit=args.limit
            ),
        )
    except _Unreadable as exc:
        return _fail("history", str(exc))
    if args.json:
        _print_json([cli_views.event_json(e) for e in events])
        return 0
    if not events:
        print(f"no events match (database {db})")
        return 0
    print(cli_views.history_table(events))
    print()
    more = f"; older events may exist: raise --limit (now {args.limit}) or use --since" if len(events) == args.limit else ""
    print(f"{len(events)} event(s), newest first, times in UTC{more}")
    return 0


# --------------------------------------------------------------------------------------------
# enable / disable through the management API
# --------------------------------------------------------------------------------------------


def default_url(config: Config) -> str:
    """`http://host:port` of the server in `config`; a wildcard listen address means this host."""
    host = config.host.strip()
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it would resend the management key somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    # No proxies from the environment (http_proxy ...): the key goes straight to the server.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _server_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, or the body's first line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:200] if text else ""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return payload["message"]
    return text[:200]


def _management_call(args: argparse.Namespace, action: str) -> int:
    key = args.key or os.environ.get(KEY_ENV)
    if not key:
        # Refuse locally: a keyless call would count towards the server's lock-out of this address.
        return _fail(action, f"no management key: pass --key or set {KEY_ENV}", 2)
    base = (args.url or default_url(_load_leniently_or_exit(_config_path(args)).config)).rstrip("/")
    body: dict[str, Any] = {}
    duration = getattr(args, "duration", None)
    if duration is not None:
        body["duration_seconds"] = int(duration) if float(duration).is_integer() else duration
    request = urllib.request.Request(
        base + cli_views.management_path(action, args.vendor, args.model),
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "cliproxy-cli",
        },
    )

    def scrub(text: str) -> str:  # belt and braces: never echo the key
        return text.replace(key, "***")

    pair = f"{args.vendor} {args.model}"
    try:
        with _opener().open(request, timeout=args.timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        message = _server_message(exc.read()) or exc.reason
        retry = exc.headers.get("Retry-After") if exc.headers else None
        extra = f" (retry after {retry}s)" if retry else ""
        if exc.code == 404 and not message:
            message = "not found"
        return _fail(action, scrub(f"{pair}: server answered {exc.code}: {message}{extra}"))
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return _fail(action, f"cliproxy is not running at {base} (connection refused)")
        if isinstance(reason, TimeoutError):
            return _fail(action, f"cliproxy at {base} did not answer within {args.timeout:g}s")
        return _fail(action, scrub(f"cannot reach cliproxy at {base}: {reason}"))
    except TimeoutError:
        return _fail(action, f"cliproxy at {base} did not answer within {args.timeout:g}s")
    except (OSError, http.client.HTTPException) as exc:
        return _fail(action, scrub(f"cannot talk to cliproxy at {base}: {exc!r}"))
    try:
        decoded: Any = json.loads(answer)
    except ValueError:
        decoded = None
    line = cli_views.confirmation(action, args.vendor, args.model, duration, decoded, time.time())
    print(scrub(f"{line} (via {base})"))
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    return _management_call(args, "enable")


def cmd_disable(args: argparse.Namespace) -> int:
    return _management_call(args, "disable")


# --------------------------------------------------------------------------------------------
# backup
# --------------------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    config = _load_leniently_or_exit(_config_path(args)).config  # only the database path is needed
    db = _database(config)
    if not db.is_file():
        return _fail("backup", f"no database at {db}")
    try:
        result = backup(db, args.path, overwrite=args.force)
    except FileExistsError as exc:
        return _fail("backup", str(exc))
    except (sqlite3.Error, OSError) as exc:
        return _fail("backup", f"cannot back up {db} to {args.path}: {exc}")
    print(
        f"{db} -> {result.path}: {result.events} events, {result.disabled_pairs} disabled pair rows, "
        f"{result.size_bytes} bytes"
    )
    return 0


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


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

    def add(name: str, handler, help: str, description: str | None = None) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(
            name, help=help, description=description or help, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--config", "-c", help="config file (default: $CLIPROXY_CONFIG or ./config.yaml)")
        p.set_defaults(handler=handler)
        return p

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
        "--since", type=_since_arg, metavar="WHEN", help="only events since WHEN: 30m, 24h, 7d, or an ISO date/time (UTC)"
    )
    p.add_argument("--limit", type=_limit_arg, default=50, metavar="N", help="at most N events (default 50)")
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
            "Make a (vendor, model) pair routable again: clears an auto-disable or a manual disable.",
        ),
        (
            "disable",
            cmd_disable,
            "disable a pair, for a while or until enabled (management API)",
            "Disable a (vendor, model) pair: for --duration, or until `cliproxy enable`.",
        ),
    ):
        p = add(name, handler, help, description + management)
        p.add_argument("vendor", metavar="VENDOR", help="the vendor's name in the config")
        p.add_argument("model", metavar="MODEL", help="the model (upstream name or alias; may contain / and :)")
        if name == "disable":
            p.add_argument(
                "--duration", type=_duration_arg, metavar="DURATION", help="for how long: 90s, 10m, 1h30m, 2d (default: until enabled)"
            )
        p.add_argument("--key", help=f"management key (default: ${KEY_ENV})")
        p.add_argument("--url", help="server URL (default: http://HOST:PORT from the config)")
        p.add_argument("--timeout", type=_duration_arg, default=10.0, metavar="SECONDS", help="give up after this long (default 10s)")

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


def cmd_demo(args: argparse.Namespace) -> int:
    from cliproxy import demo  # only this command needs it

    ports = demo.DemoPorts(args.port, args.primary_port, args.backup_port)
    try:
        return demo.run_demo(Path(args.dir), ports)
    except demo.DemoError as exc:
        return _fail("demo", str(exc))
    except MigrationError as exc:
        return _fail("demo", str(exc), _database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return _fail("demo", f"cannot set up {args.dir}: {exc}", _database_fault_status(exc))


def cmd_fake_upstream(args: argparse.Namespace) -> int:
    from cliproxy import fake_upstream  # only this command needs it

    return fake_upstream.main(args.args)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
