"""`cliproxy demo` and `fake-upstream`: the gateway with two demo vendors, and the fake
OpenAI-compatible upstream it is built on (for drills, demos and benchmarks)."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from cliproxy.cli.common import database_fault_status, fail
from cliproxy.services.store import MigrationError

__all__ = ["cmd_demo", "cmd_fake_upstream"]


def cmd_demo(args: argparse.Namespace) -> int:
    from cliproxy import demo  # only this command needs it

    ports = demo.DemoPorts(args.port, args.primary_port, args.backup_port)
    try:
        return demo.run_demo(Path(args.dir), ports)
    except demo.DemoError as exc:
        return fail("demo", str(exc))
    except MigrationError as exc:
        return fail("demo", str(exc), database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return fail("demo", f"cannot set up {args.dir}: {exc}", database_fault_status(exc))


def cmd_fake_upstream(args: argparse.Namespace) -> int:
    from cliproxy import fake_upstream  # only this command needs it

    return fake_upstream.main(args.args)
