"""`cliproxy fake-upstream` (and `python -m cliproxy.fake_upstream`): the fake as a process, for
drills, demos and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from cliproxy.fake_upstream.faults import Fault
from cliproxy.fake_upstream.server import FakeUpstream

__all__ = ["main"]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cliproxy fake-upstream", description="Fake OpenAI-compatible upstream with fault injection."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream chunks")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability of a global status fault")
    parser.add_argument("--fail-status", type=int, default=500, help="status used by --fail-rate")
    parser.add_argument("--record", action="store_true", help="keep every request in memory (off: a long benchmark would grow)")
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    fake = FakeUpstream(chunks=args.chunks, chunk_delay=args.chunk_delay, name=args.name, seed=args.seed, record=args.record)
    if args.fail_rate > 0:
        fake.fail(None, Fault(status=args.fail_status, probability=args.fail_rate))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fake.start(args.host, args.port)
    print(f"listening on http://{args.host}:{fake.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(_serve_forever(_parse_args(argv)))
    return 0
