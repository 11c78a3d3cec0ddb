"""The `cliproxy` command: the outermost shell. Subcommands parse arguments and call inwards."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .config import Config
from .settings import ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger("cliproxy")

DEFAULT_CONFIG = "config.yaml"


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("CLIPROXY_CONFIG") or DEFAULT_CONFIG


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = _load_or_exit(path)
    pairs = sum(len(v.models) for v in config.vendors)
    print(f"{path}: OK ({len(config.vendors)} vendor(s), {pairs} pair(s))")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = _load_or_exit(path)
    from .server import serve

    return asyncio.run(serve(config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliproxy", description="OpenAI-compatible LLM API gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", "-c", help="config file (default: $CLIPROXY_CONFIG or ./config.yaml)")
        p.set_defaults(handler=handler)
        return p

    add("serve", cmd_serve, "run the gateway")
    add("check-config", cmd_check_config, "validate the config file and exit (non-zero on errors)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
