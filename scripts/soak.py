"""The cliproxy soak: mixed traffic from hundreds of clients while upstreams fail, then a leak check.

    python scripts/soak.py                                   # 60 s, 300 clients
    python scripts/soak.py --duration 600 --clients 500      # longer
    python scripts/soak.py --duration 15 --clients 200 --json summary.json   # what the test runs

It needs nothing but the repository and loopback. It starts, each as its own process, the fake
upstream (`cliproxy/fake_upstream.py`) and `cliproxy serve` with a generated config: three vendors
serving the same two models (`chat` for plain requests, `chat-stream` for streams), equal priority,
`request-retry: 2`, and a short auto-disable (6 failures within 10 s with no success between them disable a pair for 2 s), so pairs
trip and come back all the time. About `--fail-rate` (20%) of upstream attempts fail: HTTP 500, 502,
503, 429 with Retry-After, a reset before the headers, and for streams a reset after the second
chunk.

This process is the load: `--clients` aiohttp clients, each sending one request after another, half
of them streamed, first for `--warmup` seconds, then for `--duration` seconds. Every answer is put in
one class:

    success                 200, whole answer, first attempt
    failover_success        200, whole answer, after failing over (x-cliproxy-attempts > 1)
    no_available_vendor     cliproxy's 503: every pair of the model disabled at that moment
    relayed_upstream_error  the last upstream error as it came (every attempt got an HTTP error)
    upstream_unreachable    cliproxy's 502/504: every attempt failed without an HTTP answer
    sse_error_event         a stream that broke after its first chunk, ended by a final error event
    unexpected              anything else (a 500 of cliproxy, a cut connection, a 200 that does not parse)

Afterwards, with the traffic stopped and every disable run out, it checks and prints:

- no `unexpected` answer;
- the gateway's open file descriptors (`/proc/PID/fd`) after the run against after the warm-up,
  within `--fd-bound` (20) not counting the idle keep-alive connections of its upstream pool (their
  number follows the concurrency of the moment), no socket left in CLOSE_WAIT, and its resident
  memory within `--rss-bound-mb` (50);
- cliproxy's `/metrics` against the database: `cliproxy_pair_disables_total` equals the number of
  `disabled` events, `cliproxy_pair_enables_total` the number of `enabled` events, and
  `cliproxy_requests_total` the number of requests this process sent;
- no stream left open: `cliproxy_streams_in_flight` and the fake upstream's own count are 0.

asyncio task counts are not exposed by cliproxy, so they are not checked; the thread count
(`/proc/PID/status`) is reported instead. Exit status 0 when every check holds, 1 otherwise.
Both child processes are stopped (by their PIDs) however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
MGMT_KEY = "soak-management-key-000000001"
MODELS = {False: "chat", True: "chat-stream"}
VENDORS = ("v1", "v2", "v3")
CLASSES = (
    "success",
    "failover_success",
    "no_available_vendor",
    "relayed_upstream_error",
    "upstream_unreachable",
    "sse_error_event",
    "unexpected",
)
#: Not a failure of the gateway: what the README documents for each kind of upstream trouble.
DOCUMENTED = frozenset(CLASSES) - {"unexpected"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The faults: about `rate` of the attempts fail, shared equally among the kinds
# ---------------------------------------------------------------------------------------------


def fault_plan(rate: float) -> list[dict[str, Any]]:
    """POST /_fake/faults bodies. The fake applies the first fault that fires, in order, so the
    k-th of n kinds fires with probability share / (1 - (k-1) * share) to give each kind `share`."""
    common: list[dict[str, Any]] = [
        {"status": 500},
        {"status": 502},
        {"status": 503},
        {"status": 429, "headers": {"Retry-After": "1"}},
        {"reset_before_headers": True},
    ]
    plans: list[dict[str, Any]] = []
    for model, kinds in (("chat", common), ("chat-stream", [*common, {"reset_after_chunks": 2}])):
        share = rate / len(kinds)
        for k, kind in enumerate(kinds):
            probability = share / (1 - k * share)
            plans.append({"model": model, "probability": round(min(1.0, probability), 6), **kind})
    return plans


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: list[str], workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT)
    return Child(name, process, log_path)


async def wait_http(child: Child, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not answer {url} within {timeout}s:\n{child.log_tail()}")
            await asyncio.sleep(0.1)


def gateway_config(port: int, upstream_port: int, database: Path, log_level: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream_port}/v1"
    return {
        "host": "127.0.0.1",
        "port": port,
        "database": str(database),
        "log-level": log_level,
        "request-retry": 2,
        "shutdown-grace-seconds": 2,
        "timeouts": {"connect": 2, "first-byte": 10, "stream-idle": 10},
        "auto-disable": {"failure-threshold": 6, "time-window-seconds": 10, "disable-duration-seconds": 2},
        "remote-management": {"secret-key": MGMT_KEY},
        "openai-compatibility": [
            {
                "name": name,
                "base-url": base,
                "api-key-entries": [{"api-key": f"sk-soak-{name}-upstream-0001"}],
                "models": [{"name": "chat"}, {"name": "chat-stream"}],
            }
            for name in VENDORS
        ],
    }


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------


@dataclass
class Tally:
    classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    streamed: int = 0
    unexpected_examples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def add(self, kind: str, status: str, detail: str = "") -> None:
        self.classes[kind] += 1
        self.statuses[status] += 1
        if kind == "unexpected" and len(self.unexpected_examples) < 10:
            self.unexpected_examples.append(f"{status}: {detail[:300]}")

    @property
    def total(self) -> int:
        return sum(self.classes.values())


def classify(status: int, headers: Any, body: bytes, stream: bool) -> str:
    """One answer -> one class (see the module docstring)."""
    attempts = int(headers.get("x-cliproxy-attempts", "0") or 0)
    if status == 200:
        if stream:
            events = [line for line in body.decode("utf-8", "replace").split("\n") if line.startswith("data: ")]
            if events and events[-1] == "data: [DONE]":
                return "failover_success" if attempts > 1 else "success"
            if events and events[-1].startswith('data: {"error"'):
                return "sse_error_event"
            return "unexpected"
        try:
            data = json.loads(body)
        except ValueError:
            return "unexpected"
        if isinstance(data, dict) and data.get("choices"):
            return "failover_success" if attempts > 1 else "success"
        return "unexpected"
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return "unexpected"
    code = error.get("code")
    if status == 503 and code == "no_available_vendor":
        return "no_available_vendor"
    if status in (502, 504) and code in ("upstream_unreachable", "upstream_timeout"):
        return "upstream_unreachable"
    if status in (429, 500, 502, 503) and attempts >= 1 and "fake upstream" in str(error.get("message")):
        return "relayed_upstream_error"
    return "unexpected"


async def one_request(session: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    stream = rng.random() < 0.5
    body: dict[str, Any] = {"model": MODELS[stream], "messages": [{"role": "user", "content": "soak"}]}
    if stream:
        body["stream"] = True
        tally.streamed += 1
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            data = await resp.read()
            kind = classify(resp.status, resp.headers, data, stream)
            tally.add(kind, str(resp.status), data.decode("utf-8", "replace"))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        tally.add("unexpected", type(exc).__name__, str(exc))
    tally.latencies.append(time.perf_counter() - started)


async def run_load(base: str, clients: int, seconds: float, seed: int) -> Tally:
    tally = Tally()
    url = base + "/v1/chat/completions"
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            rng = random.Random(seed * 100_003 + index)
            while time.monotonic() < deadline:
                await one_request(session, url, rng, tally)

        await asyncio.gather(*(client(i) for i in range(clients)))
    return tally


# ---------------------------------------------------------------------------------------------
# What the gateway process holds
# ---------------------------------------------------------------------------------------------


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def status_field(pid: int, name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}


def _tcp_table() -> dict[str, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) from /proc/net/tcp and tcp6."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as handle:
                next(handle)
                for line in handle:
                    cols = line.split()
                    local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
                    table[inode] = (
                        int(local.rsplit(":", 1)[1], 16),
                        int(remote.rsplit(":", 1)[1], 16),
                        _TCP_STATES.get(state, state),
                    )
        except OSError:
            continue
    return table


def socket_census(pid: int, upstream_port: int) -> dict[str, int] | None:
    """The gateway's descriptors by kind: idle or busy connections of its upstream pool, sockets in
    CLOSE_WAIT (the peer hung up and cliproxy never closed: the leak to look for), other sockets, other fds."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    tcp = _tcp_table()
    census = {"upstream_pool": 0, "close_wait": 0, "other_sockets": 0, "other_fds": 0}
    for link in links:
        if not link.startswith("socket:["):
            census["other_fds"] += 1
            continue
        _local, remote, state = tcp.get(link[8:-1], (0, 0, "unix"))
        if state == "close_wait":
            census["close_wait"] += 1
        elif remote == upstream_port and state == "established":
            census["upstream_pool"] += 1
        else:
            census["other_sockets"] += 1
    return census


def snapshot(pid: int, upstream_port: int) -> dict[str, Any]:
    rss = status_field(pid, "VmRSS")
    census = socket_census(pid, upstream_port) or {}
    return {
        "fds": fd_count(pid),
        # The upstream pool keeps idle keep-alive connections (up to the concurrency of the moment):
        # they vary from one snapshot to the next and are not counted against the bound.
        "fds_outside_the_pool": None if not census else sum(census.values()) - census["upstream_pool"],
        **census,
        "rss_mb": None if rss is None else round(rss / 1024, 1),
        "threads": status_field(pid, "Threads"),
    }


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {name: [(labels, value)]} (enough of the format for our own series)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        name = name_labels
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    key, _, val = part.partition("=")
                    labels[key.strip()] = val.strip().strip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float | None:
    if name not in metrics:
        return None
    return sum(v for labels, v in metrics[name] if all(labels.get(k) == want for k, want in match.items()))


def event_counts(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    upstream_port, gateway_port = free_port(), free_port()
    database = workdir / "cliproxy.db"
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(gateway_port, upstream_port, database, args.log_level), sort_keys=False))
    fake = spawn(
        "fake-upstream",
        [
            sys.executable,
            "-m",
            "cliproxy.fake_upstream",
            "--port",
            str(upstream_port),
            "--chunks",
            "6",
            "--chunk-delay",
            "0.005",
            "--seed",
            str(args.seed),
            "--name",
            "soak",
        ],
        workdir,
    )
    gateway: Child | None = None
    try:
        fake_url = f"http://127.0.0.1:{upstream_port}"
        await wait_http(fake, fake_url + "/_fake/stats", 20)
        async with aiohttp.ClientSession() as session:
            for plan in fault_plan(args.fail_rate):
                async with session.post(fake_url + "/_fake/faults", json=plan) as resp:
                    assert resp.status == 201, await resp.text()
        gateway = spawn("cliproxy", [sys.executable, "-m", "cliproxy.cli", "serve", "--config", str(config_path)], workdir)
        base = f"http://127.0.0.1:{gateway_port}"
        await wait_http(gateway, base + "/healthz", 20)
        pid = gateway.process.pid

        warm = await run_load(base, args.clients, args.warmup, args.seed + 1)
        await asyncio.sleep(1.0)
        before = snapshot(pid, upstream_port)
        started = time.monotonic()
        peak_fds = 0

        async def sample() -> None:
            nonlocal peak_fds
            while True:
                peak_fds = max(peak_fds, fd_count(pid) or 0)
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            tally = await run_load(base, args.clients, args.duration, args.seed)
        finally:
            sampler.cancel()
        elapsed = time.monotonic() - started
        # Let every disable run out (2 s) and the sweep record it, so metrics and table hold still.
        await asyncio.sleep(2.6)
        after = snapshot(pid, upstream_port)

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {MGMT_KEY}"}) as session:
            async with session.get(base + "/api/models/disabled") as resp:  # answers once everything is committed
                disabled_now = (await resp.json())["disabled"] if resp.status == 200 else None
                committed = resp.status == 200
            async with session.get(base + "/metrics") as resp:
                metrics = parse_metrics(await resp.text()) if resp.status == 200 else {}
            async with session.get(fake_url + "/_fake/stats") as resp:
                fake_stats = await resp.json()
        events = event_counts(database)
        gateway_alive = gateway.process.poll() is None
    finally:
        if gateway is not None:
            gateway.stop()
        fake.stop()

    sent = warm.total + tally.total
    disables_metric = metric_sum(metrics, "cliproxy_pair_disables_total", reason="auto")
    enables_metric = metric_sum(metrics, "cliproxy_pair_enables_total")
    requests_metric = metric_sum(metrics, "cliproxy_requests_total")
    streams_metric = metric_sum(metrics, "cliproxy_streams_in_flight")
    summary: dict[str, Any] = {
        "duration_seconds": round(elapsed, 1),
        "warmup_seconds": args.warmup,
        "clients": args.clients,
        "fail_rate": args.fail_rate,
        "requests": tally.total,
        "streamed": tally.streamed,
        "requests_per_second": round(tally.total / elapsed, 1) if elapsed else None,
        "latency_p50_seconds": _percentile(tally.latencies, 0.5),
        "latency_p99_seconds": _percentile(tally.latencies, 0.99),
        "classes": {name: tally.classes.get(name, 0) for name in CLASSES},
        "statuses": dict(sorted(tally.statuses.items())),
        "warmup_requests": warm.total,
        "warmup_unexpected": warm.classes.get("unexpected", 0),
        "unexpected_examples": warm.unexpected_examples + tally.unexpected_examples,
        "gateway_after_warmup": before,
        "gateway_after_run": after,
        "gateway_peak_fds": peak_fds,
        "events": events,
        "metrics": {
            "pair_disables_total_auto": disables_metric,
            "pair_enables_total": enables_metric,
            "requests_total": requests_metric,
            "streams_in_flight": streams_metric,
        },
        "upstream_streams_in_flight": fake_stats.get("streams_in_flight"),
        "upstream_attempts": fake_stats.get("requests"),
        "upstream_faults_applied": fake_stats.get("faults_applied"),
        "disabled_at_end": None if disabled_now is None else len(disabled_now),
        "task_count": "not exposed by cliproxy: not checked",
    }
    violations: list[str] = []
    if not gateway_alive:
        violations.append("the gateway process died")
    if warm.classes.get("unexpected") or tally.classes.get("unexpected"):
        violations.append(f"{warm.classes.get('unexpected', 0) + tally.classes.get('unexpected', 0)} unexpected answers")
    fds_before, fds_after = before["fds_outside_the_pool"], after["fds_outside_the_pool"]
    if fds_before is not None and fds_after is not None and fds_after - fds_before > args.fd_bound:
        violations.append(
            f"file descriptors outside the upstream pool grew from {fds_before} to {fds_after} (bound +{args.fd_bound})"
        )
    if after.get("close_wait"):
        violations.append(f"{after['close_wait']} sockets left in CLOSE_WAIT (closed by the peer, never by cliproxy)")
    if after.get("upstream_pool", 0) > args.clients * 3:
        violations.append(f"{after['upstream_pool']} pooled upstream connections for {args.clients} clients")
    if before["rss_mb"] is not None and after["rss_mb"] is not None and after["rss_mb"] - before["rss_mb"] > args.rss_bound_mb:
        violations.append(f"RSS grew from {before['rss_mb']} MB to {after['rss_mb']} MB (bound +{args.rss_bound_mb} MB)")
    if not committed:
        violations.append("GET /api/models/disabled did not answer 200 at the end (writes not committed?)")
    if disabled_now:
        violations.append(f"{len(disabled_now)} pairs still disabled after every disable should have run out")
    if metrics:
        if disables_metric != events.get("disabled", 0):
            violations.append(
                f"cliproxy_pair_disables_total{{reason=auto}} = {disables_metric} but {events.get('disabled', 0)} disabled events"
            )
        if enables_metric != events.get("enabled", 0):
            violations.append(f"cliproxy_pair_enables_total = {enables_metric} but {events.get('enabled', 0)} enabled events")
        if requests_metric != sent:
            violations.append(f"cliproxy_requests_total = {requests_metric} but {sent} requests were sent")
        if streams_metric:
            violations.append(f"cliproxy_streams_in_flight = {streams_metric} after the traffic stopped")
    else:
        summary["metrics"] = "GET /metrics did not answer: event counts not compared"
    if fake_stats.get("streams_in_flight"):
        violations.append(f"{fake_stats['streams_in_flight']} upstream streams still open")
    if events.get("disabled", 0) == 0:
        violations.append("no pair was ever disabled: the faults did not trip anything")
    summary["violations"] = violations
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = [
        (
            f"soak: {summary['requests']} requests in {summary['duration_seconds']} s from {summary['clients']} clients "
            f"({summary['requests_per_second']} req/s, {summary['streamed']} streamed; p50 {summary['latency_p50_seconds']} s, "
            f"p99 {summary['latency_p99_seconds']} s), {summary['fail_rate']:.0%} of upstream attempts failing"
        ),
        "answers: " + ", ".join(f"{name} {count}" for name, count in summary["classes"].items()),
        "statuses: " + ", ".join(f"{status} {count}" for status, count in summary["statuses"].items()),
        (
            f"gateway after warm-up {summary['gateway_after_warmup']}, after the run {summary['gateway_after_run']}, "
            f"peak fds {summary['gateway_peak_fds']}"
        ),
        f"events {summary['events']}; metrics {summary['metrics']}",
        (
            f"upstream attempts {summary['upstream_attempts']}, faults applied {summary['upstream_faults_applied']}, "
            f"upstream streams still open {summary['upstream_streams_in_flight']}; tasks: {summary['task_count']}"
        ),
    ]
    for example in summary["unexpected_examples"]:
        lines.append(f"  unexpected: {example}")
    lines.append("OK" if not summary["violations"] else "FAILED: " + "; ".join(summary["violations"]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak cliproxy with failing upstreams and check it for leaks.")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the baseline is taken (default 3)")
    parser.add_argument("--clients", type=int, default=300, help="concurrent clients (default 300)")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of upstream attempts that fail (default 0.2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' and the faults' random choices")
    parser.add_argument("--fd-bound", type=int, default=20, help="allowed growth of open file descriptors (default 20)")
    parser.add_argument("--rss-bound-mb", type=float, default=50.0, help="allowed growth of resident memory in MB (default 50)")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's log level (default WARNING: no access lines)")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    parser.add_argument("--workdir", metavar="DIR", help="keep config, database and logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.clients < 1 or not 0 <= args.fail_rate < 1:
        parser.error("need --duration > 0, --warmup >= 0, --clients >= 1 and 0 <= --fail-rate < 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A hard stop however the run goes: the load is bounded by --duration, the rest by this margin.
    limit = args.warmup + args.duration + 120
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        summary = asyncio.run(asyncio.wait_for(soak(args, workdir), limit))
    else:
        with tempfile.TemporaryDirectory(prefix="cliproxy-soak-") as tmp:
            summary = asyncio.run(asyncio.wait_for(soak(args, Path(tmp)), limit))
    print(render(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if not summary["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
