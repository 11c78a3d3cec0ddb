"""The cliproxy benchmark: cliproxy next to the physical limit, a bare aiohttp forwarder.

    python scripts/bench.py                 # the full run (about 4 minutes), prints one table
    python scripts/bench.py --json          # the same results as JSON on stdout
    python scripts/bench.py --quick         # a few seconds: every row, meaningless numbers (smoke test)
    python scripts/bench.py --loadgen aiohttp   # without wrk (the default when wrk is installed)
    python scripts/bench.py --table-from results.json   # the table of a run saved with --json

It needs nothing but the repository. It starts, each in its own process: the fake upstream in fast
mode (no artificial delay) and a second one failing 20% of its answers, cliproxy with generated
configurations (10 pairs; 10,000 pairs), the bare forwarder (`scripts/bare_forwarder.py`), and the
load generators: `wrk` (a C program, one thread; `apt-get install wrk`) for the throughput runs
(scenarios 1, 2's streams/s, 5; POST bodies through a Lua script written into the work dir), and an
aiohttp one (this file with `--loadgen-worker`) for what wrk cannot measure: time to first byte,
frames per read, big bodies, 1,000 held streams, 2xx-only percentiles. Without wrk every run is
aiohttp's, which competes with the servers for the cores and flatters cliproxy. Every load run is bounded in
time, every process is stopped by its PID at the end, and the targets run alternately, in a
rotated order each round; the table shows medians over `--rounds` rounds, and a ratio is the
median of the per-round ratios (each taken from runs made seconds apart).

Any load generator shares the machine's cores with the servers, so absolute figures say as much
about the machine as about cliproxy; the ratios cliproxy / forwarder are what the targets are about.
"CPU µs/req" is the user + system CPU time of the serving process (the fake upstream for "direct")
during a run, divided by the requests it answered: on a shared or noisy machine it is far steadier
than requests per second, and it is where work proportional to the configuration shows first.

Scenarios (see issue 6):
  1. non-streaming chat at concurrency 1, 16, 64, 256: req/s, p50/p99 latency, latency added over direct;
  2. streaming chat of 20 chunks at concurrency 1 and 64: streams/s, time to first and last byte;
     plus a paced stream (frames 30 ms apart) checking that frames are neither batched nor delayed;
  3. request bodies of 1 MB and 10 MB (long context + a base64 image, model rewritten by an alias): added latency;
  4. 1,000 streams opened in the same instant (median time to first byte), then 1,000 concurrent
     streams held open for 10 s: peak RSS (VmHWM) of a fresh gateway process;
  5. 10 vs 10,000 configured (vendor, model) pairs (1,000 vendors of 10 models, each vendor with its own
     key): req/s, p99 and CPU per request at concurrency 64;
  6. 20% of upstream attempts failing (two vendors, failover, auto-disable tripping) vs healthy, at
     a fixed 1,000 requests/s (open loop, at most 64 in flight): req/s of 2xx answers and their p99, answers/s of any status, upstream attempts per
     answer, gateway CPU per attempt (the cost of failover and tracking), auto-disables (from /metrics).

Latency percentiles are of 2xx answers; every row's raw runs are in the JSON (`runs`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
CLIENT_KEY = "sk-bench-client"
TARGETS = ("direct", "forwarder", "cliproxy")
STREAM_CHUNKS = 20
# The paced-stream check: frames this far apart must arrive one per read, each on time.
PACED_CHUNKS = 6
PACED_DELAY = 0.03
MB = 1024 * 1024


# =============================================================================================
# The aiohttp load generator (its own process: `bench.py --loadgen-worker`, one JSON job per stdin line)
# =============================================================================================


def build_body(spec: dict[str, Any]) -> bytes:
    """A request body: a small chat, or a long one of about `size` bytes (history + a base64 image)."""
    model = spec["model"]
    if spec["kind"] == "chat":
        payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello."}]}
        if spec.get("stream"):
            payload["stream"] = True
        return json.dumps(payload).encode()
    size = int(spec["size"])
    # Half long context (many 4 KB turns), half one base64 image, like a real multimodal request.
    turn = ("lorem ipsum dolor sit amet " * 160)[:4000]
    messages: list[dict[str, Any]] = []
    while len(messages) * 4040 < size // 2:
        messages.append({"role": "user" if len(messages) % 2 == 0 else "assistant", "content": turn})
    head = json.dumps({"model": model, "messages": messages})[:-2].encode()
    image_prefix = (
        b', {"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, '
        b'{"type": "image_url", "image_url": {"url": "data:image/png;base64,'
    )
    tail = b'"}}]}]}'
    room = max(0, size - len(head) - len(image_prefix) - len(tail))
    image = base64.b64encode(os.urandom(room * 3 // 4 + 3))[:room]
    return head + image_prefix + image + tail


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index]


async def _run_job(job: dict[str, Any], bodies: dict[str, bytes]) -> dict[str, Any]:
    import aiohttp

    key = json.dumps(job["body"], sort_keys=True)
    if key not in bodies:
        bodies[key] = build_body(job["body"])
    body = bodies[key]
    headers = {"Content-Type": "application/json", **job.get("headers", {})}
    concurrency = int(job["concurrency"])
    one_shot = bool(job.get("one_shot"))
    warmup = 0.0 if one_shot else float(job.get("warmup", 0.0))
    duration = float(job.get("duration", 0.0))
    min_requests = int(job.get("min_requests", 1))
    request_timeout = float(job.get("timeout", 60.0))
    ramp = float(job.get("ramp", 0.0))
    record_reads = bool(job.get("record_reads"))

    latencies: list[float] = []
    ttfbs: list[float] = []
    statuses: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    reads: list[tuple[float, int]] = []
    state = {"recorded": 0, "completed": 0, "attempts": 0, "open": 0, "max_open": 0, "last_done": 0.0}

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        started = time.perf_counter()
        measure_from = started + warmup
        end = measure_from + duration
        hard_end = end + request_timeout
        state["last_done"] = measure_from

        async def one() -> None:
            t0 = time.perf_counter()
            first: float | None = None
            status = "exception"
            attempts: str | None = None
            opened = False
            try:
                async with session.post(job["url"], data=body, headers=headers) as response:
                    status = str(response.status)
                    attempts = response.headers.get("x-cliproxy-attempts")
                    opened = True
                    state["open"] += 1
                    state["max_open"] = max(state["max_open"], state["open"])
                    async for chunk in response.content.iter_any():
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        if record_reads:
                            reads.append((now - t0, chunk.count(b"data: ")))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                exceptions[type(exc).__name__] += 1
                status = "exception"
            finally:
                if opened:
                    state["open"] -= 1
            t1 = time.perf_counter()
            state["completed"] += 1
            in_window = one_shot or (t0 >= measure_from and (t1 <= end or state["recorded"] < min_requests))
            if in_window:
                state["recorded"] += 1
                state["last_done"] = max(state["last_done"], t1)
                statuses[status] += 1
                if attempts is not None and attempts.isdigit():
                    state["attempts"] += int(attempts)
                if status.startswith("2"):
                    latencies.append(t1 - t0)
                    if first is not None:
                        ttfbs.append(first - t0)

        async def worker(index: int) -> None:
            if ramp:
                await asyncio.sleep(ramp * index / concurrency)
            while True:
                now = time.perf_counter()
                if now >= end and (state["recorded"] >= min_requests or now >= hard_end):
                    return
                await one()
                if one_shot:
                    return

        async def arrivals(rate: float) -> None:
            """Open loop: a request every 1/rate s whatever the answers do (at most `concurrency` in
            flight; an arrival past that is counted as `skipped`), so that every target sees the
            same request rate: a closed loop gives a faster target more requests, and with them
            more auto-disables."""
            tasks: set[asyncio.Task[None]] = set()
            index = 0
            while True:
                at = started + index / rate
                if at >= end:
                    break
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                index += 1
                if len(tasks) >= concurrency:
                    state["skipped"] += 1
                    continue
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)

        state["skipped"] = 0
        if job.get("rate"):
            await arrivals(float(job["rate"]))
        else:
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = max(end, state["last_done"]) - measure_from

    latencies.sort()
    ttfbs.sort()
    ok = len(latencies)
    ms = 1000.0

    def pct(values: list[float], q: float) -> float | None:
        v = _percentile(values, q)
        return None if v is None else v * ms

    return {
        "requests": state["recorded"],
        "completed": state["completed"],
        "attempts": state["attempts"],
        "ok": ok,
        "errors": state["recorded"] - ok,
        "statuses": dict(statuses),
        "exceptions": dict(exceptions),
        "elapsed": elapsed,
        "rps": ok / elapsed if elapsed > 0 else None,
        "answers_rps": state["recorded"] / elapsed if elapsed > 0 else None,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "ttfb_p50": pct(ttfbs, 0.5),
        "ttfb_p99": pct(ttfbs, 0.99),
        "max_open": state["max_open"],
        "skipped": state["skipped"],
        "reads": [(round(t * ms, 3), n) for t, n in reads],
    }


def loadgen_main() -> int:
    """Serve jobs from stdin, one JSON object per line, answering one JSON line each on stdout."""
    try:
        import uvloop  # a cheaper client leaves more CPU to the servers; the same for every target

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    bodies: dict[str, bytes] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = runner(_run_job(job, bodies))
        except Exception as exc:  # noqa: BLE001 - report, do not die: the orchestrator decides
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


# =============================================================================================
# Processes: start, wait until listening, stop by PID
# =============================================================================================


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Everything the benchmark started; `stop_all` ends each one by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        proc = Proc(name, popen, port, log)
        self.procs.append(proc)
        return proc

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            while proc.port:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
                try:
                    with socket.create_connection(("127.0.0.1", proc.port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{proc.name} did not listen on {proc.port} within {timeout}s:\n{proc.log_tail()}"
                        ) from None
                    time.sleep(0.05)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait()


class LoadGen:
    """The load generator process, driven one job at a time; every job is bounded by a deadline."""

    def __init__(self, processes: Processes) -> None:
        log = processes.workdir / "loadgen.log"
        with open(log, "wb") as stderr:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--loadgen-worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                text=True,
            )
        processes.procs.append(Proc("loadgen", self.popen, 0, log))  # type: ignore[arg-type]
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, job: dict[str, Any], limit: float) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(job) + "\n")
        self.popen.stdin.flush()
        try:
            line = self._lines.get(timeout=limit)
        except queue.Empty:
            raise RuntimeError(f"the load generator did not finish a job within {limit:.0f}s: {job['url']}") from None
        if line is None:
            raise RuntimeError("the load generator exited")
        result = json.loads(line)
        if "failed" in result:
            raise RuntimeError(f"load generator: {result['failed']}")
        return result


WRK_INSTALL = "apt-get install wrk (Debian, Ubuntu), dnf install wrk (Fedora), brew install wrk (macOS)"

# wrk's own summary, printed by the Lua `done` hook as one JSON line after its usual report.
# `response` is defined only when a job counts cliproxy's x-cliproxy-attempts (it costs wrk a Lua call per answer).
_WRK_LUA = """\
local f = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
{attempts}
function done(summary, latency, requests)
  local e = summary.errors
  local attempts = 0
  for _, t in ipairs(threads) do attempts = attempts + (t:get("attempts") or 0) end
  io.write(string.format(
    '\\nWRK_RESULT {{"requests": %d, "duration_us": %d, "status": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %.1f, "p99_us": %.1f, "attempts": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), attempts))
end
"""
_WRK_COUNT_ATTEMPTS = """\
threads = {}
function setup(thread) table.insert(threads, thread) end
attempts = 0
function response(status, headers, body)
  local n = headers["X-Cliproxy-Attempts"] or headers["x-cliproxy-attempts"]
  if n then attempts = attempts + tonumber(n) end
end
"""


def _lua_string(text: str) -> str:
    """A Lua string literal for `text`: every byte outside printable ASCII (and quote, backslash) as \\ddd."""
    out = []
    for byte in text.encode():
        out.append(chr(byte) if 32 <= byte < 127 and byte not in (34, 92) else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


class Wrk:
    """wrk (a C load generator: one thread, epoll) for the throughput runs; its Lua scripts live in the work dir.

    It leaves the cores to the servers, so cliproxy / forwarder is what a user sees when the gateway,
    not the load generator, is the bottleneck. It cannot time the first byte of a stream nor hold
    streams open by the thousand, so time-to-first-byte, scenario 3's bodies, scenario 4 and
    scenario 6 (2xx-only percentiles) stay on the aiohttp generator.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._scripts: dict[str, Path] = {}

    def script(self, job: dict[str, Any]) -> Path:
        headers = {"Content-Type": "application/json", **job.get("headers", {})}
        count = bool(job.get("count_attempts"))
        key = json.dumps([job["body"], headers, count], sort_keys=True)
        if key not in self._scripts:
            index = len(self._scripts)
            body_path = self.workdir / f"wrk-body-{index}.json"
            body_path.write_bytes(build_body(job["body"]))
            lua = _WRK_LUA.format(
                body_path=_lua_string(str(body_path)),
                headers="\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()),
                attempts=_WRK_COUNT_ATTEMPTS
                if count
                else "threads = {}\nfunction setup(thread) table.insert(threads, thread) end",
            )
            path = self.workdir / f"wrk-{index}.lua"
            path.write_text(lua)
            self._scripts[key] = path
        return self._scripts[key]

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        # wrk takes whole seconds and has no warm-up: connections open in the first milliseconds.
        seconds = max(1, round(float(job["duration"])))
        timeout = int(job.get("timeout", 60))
        argv = [
            "wrk",
            "-t1",
            f"-c{int(job['concurrency'])}",
            f"-d{seconds}s",
            f"--timeout={timeout}s",
            "-s",
            str(self.script(job)),
            job["url"],
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout + 30, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:] or done.stdout[-1000:]}")
        w = json.loads(line.removeprefix("WRK_RESULT "))
        elapsed = w["duration_us"] / 1e6
        socket_errors = {k: w[k] for k in ("connect", "read", "write", "timeout") if w[k]}
        # A read error is wrk's count of connections closed while it waited; the answers counted are whole.
        errors = w["status"] + w["timeout"]
        ok = max(0, w["requests"] - errors)
        return {
            "loadgen": "wrk",
            "requests": w["requests"],
            "completed": w["requests"],
            "attempts": w["attempts"],
            "ok": ok,
            "errors": errors,
            "statuses": {"non-2xx/3xx": w["status"]} if w["status"] else {},
            "exceptions": socket_errors,
            "elapsed": elapsed,
            "rps": ok / elapsed if elapsed > 0 else None,
            "answers_rps": w["requests"] / elapsed if elapsed > 0 else None,
            # wrk's latency is of every answer (its 2xx-only figure is not available); fine where all are 2xx.
            "p50": w["p50_us"] / 1000,
            "p99": w["p99_us"] / 1000,
            "ttfb_p50": None,
            "ttfb_p99": None,
            "max_open": None,
            "reads": [],
        }


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples VmRSS of a process every 50 ms while a job runs; VmHWM is read at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS") or 0)
            self._stop.wait(0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# =============================================================================================
# Configurations
# =============================================================================================


def _vendor(name: str, port: int, models: list[Any], key: str = "sk-bench") -> dict[str, Any]:
    return {
        "name": name,
        "base-url": f"http://127.0.0.1:{port}/v1",
        "api-key-entries": [{"api-key": key}],
        "models": models,
    }


def cliproxy_config(port: int, fast_port: int, flaky_port: int, database: Path, total_pairs: int = 10) -> dict[str, Any]:
    """10 pairs that the scenarios use; `total_pairs` pads with vendors of 10 models, each with its own key."""
    vendors = [
        _vendor(
            "fast",
            fast_port,
            [
                {"name": "m1"},
                {"name": "m2", "alias": "pool"},
                {"name": "m-big", "alias": "big"},
                {"name": "ok"},
                {"name": "m5"},
                {"name": "m6"},
            ],
        ),
        _vendor("fast-b", fast_port, [{"name": "ok"}, {"name": "m7"}]),
        _vendor("flaky-a", flaky_port, [{"name": "flaky"}]),
        _vendor("flaky-b", flaky_port, [{"name": "flaky"}]),
    ]
    pad = total_pairs - 10
    index = 0
    while pad > 0:
        count = min(10, pad)
        models = [{"name": f"p{index}-{j}"} for j in range(count)]
        vendors.append(_vendor(f"pad-{index:04d}", fast_port, models, key=f"sk-pad-{index:04d}-{index * 7919:08x}"))
        pad -= count
        index += 1
    return {
        "host": "127.0.0.1",
        "port": port,
        "api-keys": [CLIENT_KEY],
        "database": str(database),
        "shutdown-grace-seconds": 1,
        "auto-disable": {"failure-threshold": 5, "time-window-seconds": 10, "disable-duration-seconds": 2},
        "openai-compatibility": vendors,
    }


# =============================================================================================
# Scenarios
# =============================================================================================


@dataclass
class Settings:
    duration: float
    warmup: float
    rounds: int
    streams: int
    hold: float
    big_pairs: int
    scenarios: frozenset[int]
    #: "wrk" or "aiohttp": the generator of the throughput runs (scenarios 1, 2's streams/s, 5).
    loadgen: str = "aiohttp"
    #: Scenario 4 on processes of its own, so their peak RSS is the streams' and nothing else's.
    fresh_s4: bool = True
    #: Scenario 6's request rate (open loop): the same for every version of cliproxy measured.
    s6_rate: float = 1000.0


@dataclass
class Row:
    """One line of the results; `values` are per target (or per variant for scenarios 5 and 6)."""

    id: str
    scenario: str
    metric: str
    values: dict[str, float | None]
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    columns: tuple[str, ...] = TARGETS
    note: str = ""


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


class Bench:
    """The processes of one benchmark run, its load runs, and the rows they add up to."""

    def __init__(self, settings: Settings, workdir: Path, log: Callable[[str], None]) -> None:
        self.s = settings
        self.workdir = workdir
        self.say = log
        self.processes = Processes(workdir)
        self.rows: list[Row] = []
        self.runs: list[dict[str, Any]] = []
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}

    # ------------------------------------------------------------------------------ processes

    def start(self) -> None:
        s = self.s
        names = ["fast", "flaky", "forwarder", "cliproxy", "cliproxy_big"]
        if s.fresh_s4:
            names += ["forwarder_s4", "cliproxy_s4"]
        ports = {name: free_port() for name in names}
        fake = ["-m", "cliproxy.fake_upstream", "--host", "127.0.0.1", "--chunks", str(STREAM_CHUNKS), "--chunk-delay", "0"]
        p = self.processes
        self.pids["direct"] = p.start("fake", [*fake, "--port", str(ports["fast"])], ports["fast"]).pid
        p.start(
            "fake-flaky",
            [*fake, "--port", str(ports["flaky"]), "--fail-rate", "0.2", "--fail-status", "500", "--seed", "1"],
            ports["flaky"],
        )
        forwarder = [str(SCRIPTS / "bare_forwarder.py"), "--upstream", f"http://127.0.0.1:{ports['fast']}"]
        configs = {"cliproxy": 10, "cliproxy_big": s.big_pairs, "cliproxy_s4": 10}
        for name, pairs in configs.items():
            if name not in ports:
                continue
            path = self.workdir / f"{name}.yaml"
            config = cliproxy_config(ports[name], ports["fast"], ports["flaky"], self.workdir / f"{name}.db", pairs)
            path.write_text(json.dumps(config, indent=1))  # JSON is YAML
            proc = p.start(name.replace("_", "-"), ["-m", "cliproxy.cli", "serve", "--config", str(path)], ports[name])
            self.pids[name] = proc.pid
        for name in ("forwarder", "forwarder_s4"):
            if name in ports:
                proc = p.start(name.replace("_", "-"), [*forwarder, "--port", str(ports[name])], ports[name])
                self.pids[name] = proc.pid
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        if not s.fresh_s4:  # --quick: scenario 4 reuses the processes (its peak RSS then means little)
            for name in ("forwarder", "cliproxy"):
                self.pids[f"{name}_s4"], self.urls[f"{name}_s4"] = self.pids[name], self.urls[name]
        self.loadgen = LoadGen(p)  # starts while the servers do
        self.wrk = Wrk(self.workdir) if self.s.loadgen == "wrk" else None
        p.wait_ready(timeout=90.0)
        self.say("started: " + ", ".join(f"{pr.name}={pr.pid}" for pr in p.procs))

    def stop(self) -> None:
        self.processes.stop_all()
        self.say("stopped every process")

    # ---------------------------------------------------------------------------------- runs

    def job(
        self,
        target: str,
        *,
        model: str,
        concurrency: int,
        stream: bool = False,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        base = {"direct": self.urls["fast"], "forwarder": self.urls["forwarder"], "cliproxy": self.urls["cliproxy"]}.get(
            target
        ) or self.urls[target]
        spec = {"kind": "chat", "model": model, "stream": stream, **(body or {})}
        job = {
            "process": target,
            "url": base + "/v1/chat/completions",
            "concurrency": concurrency,
            "duration": self.s.duration,
            "warmup": self.s.warmup,
            "body": spec,
            "headers": {"Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})},
            "timeout": 60.0,
            "loadgen": self.s.loadgen,
            **extra,
        }
        return job

    def run(self, label: str, target: str, job: dict[str, Any]) -> dict[str, Any]:
        limit = job["warmup"] + job["duration"] + job["timeout"] + 30.0
        pid = self.pids[job["process"]]
        cpu_before = _cpu_seconds(pid)
        if job["loadgen"] == "wrk" and self.wrk is not None:
            result = self.wrk.run(job)
        else:
            result = {"loadgen": "aiohttp", **self.loadgen.run(job, limit)}
        cpu = _cpu_seconds(pid) - cpu_before
        # CPU of the serving process per request it answered (warm-up included, like the CPU time).
        result["cpu_us"] = 1e6 * cpu / result["completed"] if result["completed"] else None
        self.runs.append({"label": label, "target": target, **{k: v for k, v in result.items() if k != "reads"}})
        if result["errors"] and not label.startswith("s6"):
            self.say(f"  {label} {target}: {result['errors']} error(s) {result['statuses']} {result['exceptions']}")
        return result

    def rounds(self, label: str, jobs: dict[str, dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
        """Every target once per round, the order rotated each round; returns one {target: result} per round."""
        names = list(jobs)
        out = []
        for r in range(self.s.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            out.append({name: self.run(label, name, jobs[name]) for name in order})
        return out

    # ----------------------------------------------------------------------------- scenarios

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def triple(
        self,
        row_id: str,
        scenario: str,
        metric: str,
        rounds: list[dict[str, dict[str, Any]]],
        key: str,
        *,
        target: str = "",
        check: Callable[[float | None, dict[str, float | None]], bool | None] | None = None,
    ) -> Row:
        values = {t: _median([r[t][key] for r in rounds]) for t in TARGETS}
        ratio = _median([_div(r["cliproxy"][key], r["forwarder"][key]) for r in rounds])
        row = Row(row_id, scenario, metric, values, ratio, target)
        if check is not None:
            row.met = check(ratio, values)
        self.add(row)
        return row

    def added(
        self,
        row_id: str,
        scenario: str,
        metric: str,
        rounds: list[dict[str, dict[str, Any]]],
        key: str,
        *,
        target: str = "",
        check: Callable[[float | None, dict[str, float | None]], bool | None] | None = None,
    ) -> Row:
        """Latency added over direct, per round, then the median."""
        values: dict[str, float | None] = {"direct": None}
        for t in ("forwarder", "cliproxy"):
            values[t] = _median([_sub(r[t][key], r["direct"][key]) for r in rounds])
        forwarder = values["forwarder"]
        # A ratio of added latencies means nothing when the forwarder added nothing measurable (noise).
        ratio = _div(values["cliproxy"], forwarder) if forwarder is not None and forwarder > 0.05 else None
        row = Row(row_id, scenario, metric, values, ratio, target)
        if check is not None:
            row.met = check(ratio, values)
        self.add(row)
        return row

    def scenario1(self) -> None:
        for c in (1, 16, 64, 256):
            self.say(f"scenario 1: non-streaming chat, concurrency {c}")
            jobs = {t: self.job(t, model="m1", concurrency=c) for t in TARGETS}
            rounds = self.rounds(f"s1.c{c}", jobs)
            name = f"1 non-stream c={c}"
            rps_check = (lambda ratio, v: ratio is not None and ratio >= 0.8) if c == 64 else None
            self.triple(f"s1.c{c}.rps", name, "req/s", rounds, "rps", target="≥ 0.8 × fwd" if c == 64 else "", check=rps_check)
            self.triple(f"s1.c{c}.p50", name, "p50 ms", rounds, "p50")
            self.triple(f"s1.c{c}.p99", name, "p99 ms", rounds, "p99")
            self.triple(f"s1.c{c}.cpu_us", name, "CPU µs/req", rounds, "cpu_us")
            if c == 1:
                self.added(
                    f"s1.c{c}.added_p50",
                    name,
                    "added p50 ms",
                    rounds,
                    "p50",
                    target="cliproxy ≤ 1 ms",
                    check=lambda ratio, v: v["cliproxy"] is not None and v["cliproxy"] <= 1.0,
                )
                self.added(
                    f"s1.c{c}.added_p99",
                    name,
                    "added p99 ms",
                    rounds,
                    "p99",
                    target="cliproxy ≤ 2.5 ms",
                    check=lambda ratio, v: v["cliproxy"] is not None and v["cliproxy"] <= 2.5,
                )
            else:
                self.added(f"s1.c{c}.added_p50", name, "added p50 ms", rounds, "p50")

    def scenario2(self) -> None:
        for c in (1, 64):
            self.say(f"scenario 2: streaming chat of {STREAM_CHUNKS} chunks, concurrency {c}")
            jobs = {t: self.job(t, model="m1", concurrency=c, stream=True) for t in TARGETS}
            rounds = self.rounds(f"s2.c{c}", jobs)
            # wrk reads whole responses: streams/s and CPU are its; the first byte is timed by aiohttp.
            timed = rounds
            if self.s.loadgen != "aiohttp":
                ttfb_jobs = {t: self.job(t, model="m1", concurrency=c, stream=True, loadgen="aiohttp") for t in TARGETS}
                timed = self.rounds(f"s2.c{c}.ttfb", ttfb_jobs)
            name = f"2 stream c={c}"
            self.triple(
                f"s2.c{c}.rps",
                name,
                "streams/s",
                rounds,
                "rps",
                target="≥ 0.8 × fwd" if c == 64 else "",
                check=(lambda ratio, v: ratio is not None and ratio >= 0.8) if c == 64 else None,
            )
            self.triple(f"s2.c{c}.ttfb_p50", name, "TTFB p50 ms", timed, "ttfb_p50")
            self.triple(f"s2.c{c}.ttlb_p50", name, "TTLB p50 ms", timed, "p50")
            self.triple(f"s2.c{c}.cpu_us", name, "CPU µs/stream", rounds, "cpu_us")
            self.added(
                f"s2.c{c}.added_ttfb_p50",
                name,
                "added TTFB p50 ms",
                timed,
                "ttfb_p50",
                target="≤ 1.5 × fwd's",
                check=lambda ratio, v: _within(v["cliproxy"], v["forwarder"], 1.5),
            )
        self.say(f"scenario 2: paced stream ({PACED_CHUNKS} frames {PACED_DELAY * 1000:.0f} ms apart)")
        headers = {"x-fake-chunks": str(PACED_CHUNKS), "x-fake-chunk-delay": str(PACED_DELAY)}
        frames: dict[str, float | None] = {}
        lags: dict[str, float | None] = {}
        for t in TARGETS:
            job = self.job(
                t, model="m1", concurrency=1, stream=True, headers=headers, one_shot=True, record_reads=True, loadgen="aiohttp"
            )
            reads = self.run("s2.paced", t, job)["reads"]
            data_reads = [(at, n) for at, n in reads if n]
            frames[t] = max((n for _, n in data_reads), default=None)
            if data_reads:
                first = data_reads[0][0]
                lags[t] = max(at - first - i * PACED_DELAY * 1000 for i, (at, _) in enumerate(data_reads))
            else:
                lags[t] = None
        self.add(
            Row(
                "s2.paced.frames_per_read",
                "2 stream paced",
                "max frames per read",
                frames,
                target="1 (never batched)",
                met=frames["cliproxy"] == 1,
            )
        )
        extra = _sub(lags["cliproxy"], lags["direct"])
        self.add(
            Row(
                "s2.paced.lag",
                "2 stream paced",
                "max frame lag ms",
                lags,
                target="≤ direct + 5 ms",
                met=extra is not None and extra <= 5.0,
            )
        )

    def scenario3(self) -> None:
        for size_mb in (1, 10):
            self.say(f"scenario 3: {size_mb} MB request body, concurrency 1")
            jobs = {}
            for t in TARGETS:
                model = "big" if t == "cliproxy" else "m-big"  # the alias makes cliproxy rewrite `model`
                jobs[t] = self.job(t, model=model, concurrency=1, body={"kind": "big", "size": size_mb * MB}, loadgen="aiohttp")
            rounds = self.rounds(f"s3.{size_mb}mb", jobs)
            name = f"3 body {size_mb} MB"
            self.triple(f"s3.{size_mb}mb.p50", name, "p50 ms", rounds, "p50")
            self.added(
                f"s3.{size_mb}mb.added_p50",
                name,
                "added p50 ms",
                rounds,
                "p50",
                target="≤ 2 × fwd's" if size_mb == 10 else "",
                check=(lambda ratio, v: _within(v["cliproxy"], v["forwarder"], 2.0)) if size_mb == 10 else None,
            )

    def scenario4(self) -> None:
        n, hold = self.s.streams, self.s.hold
        fresh = " (fresh forwarder and cliproxy processes)" if self.s.fresh_s4 else ""
        self.say(f"scenario 4: {n} concurrent streams held {hold:g} s{fresh}")
        headers = {"x-fake-chunks": "10", "x-fake-chunk-delay": str(hold / 10)}
        peak: dict[str, float | None] = {"direct": None}
        idle: dict[str, float | None] = {"direct": None}
        opened: dict[str, float | None] = {"direct": None}
        ttfb: dict[str, float | None] = {"direct": None}
        burst_peak_kb = {"forwarder": 0, "cliproxy": 0}
        for t in burst_peak_kb:
            idle[t] = (_status_kb(self.pids[f"{t}_s4"], "VmRSS") or 0) / 1024
        # First, all at once: n streams of 20 chunks started in the same instant (no ramp), the
        # median time to their first byte; targets alternate, rounds as elsewhere. The bursts'
        # peak counts towards the peak RSS below.
        bursts: dict[str, list[float | None]] = {t: [] for t in burst_peak_kb}
        for r in range(self.s.rounds):
            for t in ("forwarder", "cliproxy") if r % 2 == 0 else ("cliproxy", "forwarder"):
                burst = self.job(
                    f"{t}_s4", model="m1", concurrency=n, stream=True, one_shot=True, timeout=60.0, loadgen="aiohttp"
                )
                with RssSampler(self.pids[f"{t}_s4"]) as burst_sampler:
                    result = self.run("s4.burst", t, burst)
                burst_peak_kb[t] = max(burst_peak_kb[t], burst_sampler.peak_kb)
                bursts[t].append(result["ttfb_p50"])
                if result["ok"] != n:
                    self.say(
                        f"  s4 burst {t}: only {result['ok']} of {n} streams completed: {result['statuses']} {result['exceptions']}"
                    )
        for t, values in bursts.items():
            ttfb[t] = _median(values)
        for t in ("forwarder", "cliproxy"):
            pid = self.pids[f"{t}_s4"]
            job = self.job(
                f"{t}_s4",
                model="m1",
                concurrency=n,
                stream=True,
                headers=headers,
                one_shot=True,
                ramp=min(1.0, hold / 5),
                timeout=hold + 60.0,
                loadgen="aiohttp",
            )
            with RssSampler(pid) as sampler:
                result = self.run("s4", t, job)
            hwm = _status_kb(pid, "VmHWM")
            peak[t] = max(hwm or 0, sampler.peak_kb, burst_peak_kb[t]) / 1024
            opened[t] = result["max_open"]
            if result["ok"] != n:
                self.say(f"  s4 {t}: only {result['ok']} of {n} streams completed: {result['statuses']} {result['exceptions']}")
        ratio = _div(ttfb["cliproxy"], ttfb["forwarder"])
        self.add(
            Row(
                "s4.burst_ttfb_p50",
                f"4 {n} open streams",
                "at once: TTFB p50 ms",
                ttfb,
                ratio,
                "≤ 1.5 × fwd",
                met=ratio is not None and ratio <= 1.5,
            )
        )
        self.add(Row("s4.rss_idle", f"4 {n} open streams", "RSS before MB", idle, _div(idle["cliproxy"], idle["forwarder"])))
        ratio = _div(peak["cliproxy"], peak["forwarder"])
        self.add(
            Row(
                "s4.rss_peak",
                f"4 {n} open streams",
                "peak RSS MB",
                peak,
                ratio,
                "≤ 1.5 × fwd",
                met=ratio is not None and ratio <= 1.5,
            )
        )
        self.add(
            Row(
                "s4.max_open",
                f"4 {n} open streams",
                "streams open at once",
                opened,
                _div(opened["cliproxy"], opened["forwarder"]),
                target=f"= {n}",
                met=opened["cliproxy"] == n,
            )
        )

    def scenario5(self) -> None:
        big = self.s.big_pairs
        self.say(f"scenario 5: 10 vs {big:,} configured pairs, concurrency 64")
        jobs = {
            "10 pairs": self.job("cliproxy", model="m1", concurrency=64),
            f"{big:,} pairs": self.job("cliproxy_big", model="m1", concurrency=64),
        }
        rounds = self.rounds("s5", jobs)
        a, b = jobs
        # "Beyond noise": 10%. Requests per second swing more than that on a shared box, so CPU per
        # request (far steadier) is judged too: work proportional to the config would show there first.
        self._pair_row(
            "s5.rps", "5 pairs in config", "req/s c=64", rounds, "rps", (a, b), "within ±10%", lambda ratio: abs(ratio - 1) <= 0.1
        )
        self._pair_row("s5.p99", "5 pairs in config", "p99 ms c=64", rounds, "p99", (a, b), "", None)
        self._pair_row(
            "s5.cpu_us",
            "5 pairs in config",
            "CPU µs/req c=64",
            rounds,
            "cpu_us",
            (a, b),
            "≤ 1.1 × 10 pairs",
            lambda ratio: ratio <= 1.1,
        )

    def scenario6(self) -> None:
        rate = self.s.s6_rate
        self.say(f"scenario 6: 20% of upstream attempts failing (two vendors, failover) vs healthy, {rate:g} req/s")
        # aiohttp: the p99 of 2xx answers only, and attempts per answer from every answer's header.
        # Open loop at a fixed rate (at most 64 in flight): with a closed loop a faster gateway sends
        # more attempts, so five failures in a row (the threshold) come sooner, both vendors spend
        # more of the run disabled, and the scenario measured the policy, not the cost of failover.
        jobs = {
            "healthy": self.job("cliproxy", model="ok", concurrency=64, loadgen="aiohttp", rate=rate),
            "20% failing": self.job("cliproxy", model="flaky", concurrency=64, loadgen="aiohttp", rate=rate),
        }
        metrics = self.urls["cliproxy"] + "/metrics"
        vendors = {"healthy": 'vendor="fast', "20% failing": 'vendor="flaky-'}  # fast, fast-b; flaky-a, flaky-b

        def disables() -> dict[str, float | None]:
            return {c: _metric_sum(metrics, "cliproxy_pair_disables_total", ('reason="auto"', v)) for c, v in vendors.items()}

        before = disables()
        rounds = self.rounds("s6", jobs)
        after = disables()
        cols = tuple(jobs)
        self._pair_row(
            "s6.rps",
            "6 failing upstream",
            f"2xx req/s at {rate:g}/s",
            rounds,
            "rps",
            cols,
            "≥ 0.9 × healthy",
            lambda ratio: ratio >= 0.9,
        )
        self._pair_row(
            "s6.p99",
            "6 failing upstream",
            f"p99 ms at {rate:g}/s",
            rounds,
            "p99",
            cols,
            "≤ 1.1 × healthy",
            lambda ratio: ratio <= 1.1,
        )
        self._pair_row("s6.answers", "6 failing upstream", "answers/s, any status", rounds, "answers_rps", cols, "", None)
        for r in rounds:
            for result in r.values():
                per = _div(result["attempts"], result["requests"])
                result["attempts_per_answer"] = per
                result["cpu_us_per_attempt"] = _div(result["cpu_us"], per)
        self._pair_row(
            "s6.attempts", "6 failing upstream", "upstream attempts/answer", rounds, "attempts_per_answer", cols, "", None
        )
        self._pair_row(
            "s6.cpu_attempt",
            "6 failing upstream",
            "CPU µs/attempt",
            rounds,
            "cpu_us_per_attempt",
            cols,
            "≤ 1.1 × healthy",
            lambda ratio: ratio <= 1.1,
        )
        share = {c: _median([_div(r[c]["errors"], r[c]["requests"]) for r in rounds]) for c in cols}
        share = {c: None if v is None else 100 * v for c, v in share.items()}
        self.add(
            Row(
                "s6.errors",
                "6 failing upstream",
                "non-2xx answers %",
                share,
                None,
                columns=cols,
                note="client sees an error only when both pairs failed or were disabled",
            )
        )
        self.add(
            Row(
                "s6.disables",
                "6 failing upstream",
                "auto-disables (all rounds)",
                {c: _sub(after[c], before[c]) for c in cols},
                None,
                columns=cols,
            )
        )

    def _pair_row(
        self,
        row_id: str,
        scenario: str,
        metric: str,
        rounds: list[dict[str, dict[str, Any]]],
        key: str,
        cols: tuple[str, str],
        target: str,
        check: Callable[[float], bool] | None,
    ) -> None:
        a, b = cols
        values = {c: _median([r[c][key] for r in rounds]) for c in cols}
        ratio = _median([_div(r[b][key], r[a][key]) for r in rounds])
        met = None if check is None or ratio is None else check(ratio)
        self.add(Row(row_id, scenario, metric, values, ratio, target, met, columns=cols))

    def run_all(self) -> None:
        steps = {1: self.scenario1, 2: self.scenario2, 3: self.scenario3, 4: self.scenario4, 5: self.scenario5, 6: self.scenario6}
        for number, step in steps.items():
            if number in self.s.scenarios:
                step()


def _metric_sum(url: str, name: str, labels: Sequence[str]) -> float | None:
    """The sum of a Prometheus counter's samples that carry every one of `labels` (None when /metrics is unreadable)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _within(value: float | None, reference: float | None, factor: float) -> bool | None:
    """`value <= factor x reference` for added latencies; a negative or tiny reference counts as 0.1 ms."""
    if value is None or reference is None:
        return None
    return value <= factor * max(reference, 0.1)


# =============================================================================================
# Output
# =============================================================================================


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp

    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "loadgen_loop": "uvloop" if _uvloop_available() else "asyncio",
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str | None:
    if not wrk_available():
        return None
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).split(" [")[0].strip() or None


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(data: dict[str, Any]) -> str:
    """The rows as two aligned text tables: the three targets, then cliproxy against itself."""
    rows = data["rows"]
    verdict = {True: "yes", False: "NO", None: ""}
    out: list[str] = []
    main = [r for r in rows if tuple(r["columns"]) == TARGETS]
    other = [r for r in rows if tuple(r["columns"]) != TARGETS]
    if main:
        header = ["scenario", "metric", "direct", "forwarder", "cliproxy", "cliproxy÷fwd", "target", "met"]
        body = [
            [
                r["scenario"],
                r["metric"],
                *(_fmt(r["values"].get(t)) for t in TARGETS),
                _fmt(r["ratio"]),
                r["target"],
                verdict[r["met"]],
            ]
            for r in main
        ]
        out += _align(header, body)
    if other:
        out.append("")
        header = ["scenario", "metric", "baseline", "value", "variant", "value", "variant÷baseline", "target", "met"]
        body = []
        for r in other:
            a, b = r["columns"]
            body.append(
                [
                    r["scenario"],
                    r["metric"],
                    a,
                    _fmt(r["values"].get(a)),
                    b,
                    _fmt(r["values"].get(b)),
                    _fmt(r["ratio"]),
                    r["target"],
                    verdict[r["met"]],
                ]
            )
        out += _align(header, body)
    return "\n".join(out)


def _align(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = {
        i
        for i in range(len(header))
        if header[i] in ("direct", "forwarder", "cliproxy", "cliproxy÷fwd", "value", "variant÷baseline")
    }

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in body)]


# =============================================================================================
# Command line
# =============================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark cliproxy against a bare forwarder and the upstream itself.")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--quick", action="store_true", help="tiny runs for the smoke test: every row, no meaningful numbers")
    parser.add_argument("--duration", type=float, help="seconds measured per load run (default 1.2; --quick 0.05)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario point; medians are reported (default 5; --quick 1)")
    parser.add_argument("--streams", type=int, help="scenario 4: concurrent streams (default 1000; --quick 20)")
    parser.add_argument("--hold", type=float, help="scenario 4: seconds each stream stays open (default 10; --quick 0.5)")
    parser.add_argument("--s6-rate", type=float, help="scenario 6: requests per second, open loop (default 1000; --quick 200)")
    parser.add_argument("--big-pairs", type=int, help="scenario 5: pairs in the large config (default 10000; --quick 1000)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6", help="comma-separated subset to run (default all)")
    parser.add_argument(
        "--table-from", metavar="FILE", type=Path, help="print the table of a run saved with --json, and run nothing"
    )
    parser.add_argument(
        "--loadgen",
        choices=("wrk", "aiohttp"),
        help="the load generator for the throughput runs (default wrk when installed, else aiohttp)",
    )
    parser.add_argument("--loadgen-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen_worker:
        return loadgen_main()
    if args.table_from is not None:
        print(render_table(json.loads(args.table_from.read_text())))
        return 0
    quick = args.quick

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    started = time.monotonic()
    loadgen = args.loadgen or ("wrk" if wrk_available() else "aiohttp")
    if loadgen == "wrk" and not wrk_available():
        print(f"wrk is not installed: {WRK_INSTALL}", file=sys.stderr)
        return 2
    if args.loadgen is None and loadgen == "aiohttp":
        print(
            f"wrk is not installed, so the aiohttp load generator runs instead; it competes with the servers for the"
            f" cores and flatters every ratio. For the real figures: {WRK_INSTALL}",
            file=sys.stderr,
        )
    duration = pick(args.duration, 1.2, 0.05)
    settings = Settings(
        duration=duration,
        warmup=min(0.3, max(0.02, duration / 4)),
        rounds=pick(args.rounds, 5, 1),
        streams=pick(args.streams, 1000, 20),
        hold=pick(args.hold, 10.0, 0.5),
        big_pairs=max(10, pick(args.big_pairs, 10_000, 1_000)),
        scenarios=frozenset(int(x) for x in args.scenarios.split(",") if x.strip()),
        fresh_s4=not quick,
        loadgen=loadgen,
        s6_rate=pick(args.s6_rate, 1000.0, 200.0),
    )

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="cliproxy-bench-") as tmp:
        bench = Bench(settings, Path(tmp), say)
        try:
            bench.start()
            bench.run_all()
        finally:
            bench.stop()
    seconds = time.monotonic() - started
    command = "python scripts/bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    data = {
        "command": command.replace(" --json", ""),
        "machine": info,
        "settings": {k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in settings.__dict__.items()},
        "seconds": round(seconds, 1),
        "rows": [r.__dict__ for r in bench.rows],
        "runs": bench.runs,
    }
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(render_table(data))
        print(
            f"\n{info['nproc']} cores, {info['cpu']}, Python {info['python']}, aiohttp {info['aiohttp']};"
            f" load generator {settings.loadgen}; load average {info['loadavg_at_start'][0]:.2f} at the start; {seconds:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
