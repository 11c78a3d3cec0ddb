"""What every `cliproxy` command shares: finding and loading the config, the database path, exit
codes and the one-line error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cliproxy.core.config import Config
from cliproxy.services.config_loader import ConfigError, LenientConfig, load_config, load_config_leniently

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_CONFIG",
    "EXIT_DATABASE",
    "config_path",
    "database_fault_status",
    "database_path",
    "fail",
    "load_leniently_or_exit",
    "load_or_exit",
    "print_json",
]

DEFAULT_CONFIG = "config.yaml"

#: A usage or config error (argparse exits 2 too): restarting cannot fix it.
EXIT_CONFIG = 2
#: The database cannot be used: restarting cannot fix it either (the unit's RestartPreventExitStatus).
EXIT_DATABASE = 3


def config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("CLIPROXY_CONFIG") or DEFAULT_CONFIG


def load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def load_leniently_or_exit(path: str) -> LenientConfig:
    """For the commands that need only the database, host and port: the `${VAR}`s of keys and
    secrets may be unset in the operator's shell (the unit reads them from its own file)."""
    try:
        return load_config_leniently(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(2) from None


# SQLite's codes for "another connection holds the lock": waiting and retrying can fix those.
_TRANSIENT_SQLITE_ERRORS = {"SQLITE_BUSY", "SQLITE_LOCKED"}


def database_fault_status(exc: BaseException) -> int:
    """EXIT_DATABASE for a database fault that stays until someone acts, 1 for a busy database."""
    cause: BaseException | None = exc
    while cause is not None:
        if getattr(cause, "sqlite_errorname", None) in _TRANSIENT_SQLITE_ERRORS:
            return 1
        cause = cause.__cause__
    return EXIT_DATABASE


def fail(command: str, message: str, code: int = 1) -> int:
    """One line on stderr, argparse style, and the exit code to return."""
    print(f"cliproxy {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def database_path(config: Config) -> Path:
    """The database file, resolved like the server does (relative to the working directory)."""
    return Path(config.database).resolve()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
