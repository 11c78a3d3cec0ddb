"""A real `cliproxy serve` process: the systemd notify protocol, SIGTERM/SIGINT with streams in flight."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import eventually, vendor
from tests.processes import GatewayProcess

STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class NotifyListener:
    """The systemd side of the notify protocol: a datagram socket whose address goes in $NOTIFY_SOCKET."""

    def __init__(self, *, abstract: bool, tmp_path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cliproxy-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)

    def receive(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


def spawn(gw: GatewayProcess) -> subprocess.Popen[bytes]:
    """Start the gateway without waiting for its port (GatewayProcess.start would connect first)."""
    log = open(gw.log_path, "ab")
    gw.process = subprocess.Popen(
        [sys.executable, "-m", "cliproxy.cli", "serve", "--config", str(gw.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=gw.env,
    )
    log.close()
    return gw.process


async def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    await eventually(lambda: process.poll() is not None, "the gateway to exit", timeout=timeout)
    return process.returncode


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def processes():
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        if proc.process is not None and proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait(timeout=10)


class TestNotify:
    """READY=1 reaches $NOTIFY_SOCKET only once the port answers; STOPPING=1 comes with SIGTERM."""

    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_ready_when_listening_then_stopping(self, tmp_path, processes, abstract):
        listener = NotifyListener(abstract=abstract, tmp_path=tmp_path)
        try:
            gw = GatewayProcess(tmp_path, {"openai-compatibility": []}, env={"NOTIFY_SOCKET": listener.address})
            processes.append(gw)
            spawn(gw)
            ready = listener.receive(timeout=20)
            # At this moment the database is migrated and the port answers.
            with urllib.request.urlopen(f"{gw.url}/healthz", timeout=2) as resp:
                assert resp.status == 200
            with urllib.request.urlopen(f"{gw.url}/readyz", timeout=2) as resp:
                assert resp.status == 200
            assert ready.splitlines()[0] == "READY=1"
            assert f"STATUS=listening on 127.0.0.1:{gw.port}" in ready.splitlines()
            assert (tmp_path / "cliproxy.db").exists()
            gw.process.send_signal(signal.SIGTERM)
            assert listener.receive(timeout=10).splitlines()[0] == "STOPPING=1"
            assert gw.process.wait(timeout=20) == 0
        finally:
            listener.close()

    def test_no_ready_when_the_port_is_taken(self, tmp_path, processes):
        listener = NotifyListener(abstract=True, tmp_path=tmp_path)
        blocker = socket.socket()
        try:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            gw = GatewayProcess(
                tmp_path, {"port": blocker.getsockname()[1], "openai-compatibility": []}, env={"NOTIFY_SOCKET": listener.address}
            )
            processes.append(gw)
            assert spawn(gw).wait(timeout=20) == 1
            with pytest.raises(TimeoutError):
                listener.receive(timeout=0.2)
            assert "cannot listen on 127.0.0.1" in gw.log()
        finally:
            blocker.close()
            listener.close()


class TestGracefulShutdown:
    """SIGTERM and SIGINT: no new connections, streams in flight finish within the grace, exit 0."""

    @pytest.mark.slow  # a real process finishes a paced stream after the signal (about 2.5 s; 3 s on a loaded box)
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    async def test_stream_in_flight_completes(self, upstreams, tmp_path, processes, sig):
        up = await upstreams(chunks=20, chunk_delay=0.1)
        gw = GatewayProcess(tmp_path, {"shutdown-grace-seconds": 10, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        processes.append(gw.start())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json=STREAM) as resp:
                assert resp.status == 200
                body = await resp.content.readany()
                gw.process.send_signal(sig)
                # The listening socket closes at once; the stream goes on.
                await eventually(
                    lambda: asyncio.to_thread(port_refuses, gw.port),
                    "the gateway to stop accepting connections after the signal",
                    timeout=1,
                )
                assert gw.process.poll() is None
                assert up.streams_in_flight == 1
                body += await resp.read()
        assert body.endswith(b"data: [DONE]\n\n")
        assert body.count(b"chat.completion.chunk") >= 20
        assert await wait_exit(gw.process, 15) == 0
        log = gw.log()
        assert "letting requests in flight finish" in log and "cliproxy stopped" in log
        assert "Traceback" not in log

    async def test_stream_longer_than_the_grace_is_cut(self, upstreams, tmp_path, processes):
        up = await upstreams(chunks=100, chunk_delay=0.1)
        gw = GatewayProcess(tmp_path, {"shutdown-grace-seconds": 0.5, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        processes.append(gw.start())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json=STREAM) as resp:
                await resp.content.readany()
                started = time.monotonic()
                gw.process.send_signal(signal.SIGTERM)
                body = b""
                with pytest.raises(aiohttp.ClientPayloadError):
                    while chunk := await resp.content.readany():
                        body += chunk
        assert b"[DONE]" not in body
        assert await wait_exit(gw.process, 15) == 0
        assert time.monotonic() - started < 5
        await eventually(lambda: up.streams_in_flight == 0, "the gateway to close its upstream request", timeout=2)

    async def test_grace_is_kept_and_the_cut_stream_is_logged_as_shutdown(self, upstreams, tmp_path, processes):
        """grace 1 s: the client's stream ends 1.0-1.5 s after SIGTERM; its access line says `shutdown`."""
        up = await upstreams(chunks=200, chunk_delay=0.05)
        gw = GatewayProcess(tmp_path, {"shutdown-grace-seconds": 1, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        processes.append(gw.start())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json=STREAM, headers={"x-request-id": "cut-1"}) as resp:
                assert resp.status == 200
                await resp.content.readany()
                started = time.monotonic()
                gw.process.send_signal(signal.SIGTERM)
                body = b""
                with pytest.raises(aiohttp.ClientPayloadError):
                    while chunk := await resp.content.readany():
                        body += chunk
                ended = time.monotonic() - started
        assert b"[DONE]" not in body
        assert 1.0 <= ended <= 1.5, f"the stream ended {ended:.3f}s after SIGTERM with a 1 s grace"
        assert await wait_exit(gw.process, 15) == 0
        [line] = [line for line in gw.log().splitlines() if "request_id='cut-1'" in line]
        assert "outcome='shutdown'" in line and "status=200" in line, line
        assert "client_disconnect" not in line and "status=499" not in line

    async def test_idle_shutdown_is_quick_and_flushes(self, tmp_path, processes):
        gw = GatewayProcess(
            tmp_path,
            {
                "remote-management": {"secret-key": "mgmt-key-graceful-0001"},
                "openai-compatibility": [vendor("a", "http://127.0.0.1:9/v1", ["m"])],
            },
        )
        processes.append(gw.start())
        async with aiohttp.ClientSession() as session:
            # A keep-alive connection that stays open must not hold the shutdown up.
            async with session.get(f"{gw.url}/healthz") as resp:
                assert resp.status == 200
            started = time.monotonic()
            gw.process.send_signal(signal.SIGTERM)
            assert await wait_exit(gw.process, 10) == 0
            assert time.monotonic() - started < 3


class TestJsonLogsOfAProcess:
    """With log-format json every stderr line of the process is one JSON object."""

    async def test_every_line_is_json(self, upstreams, tmp_path, processes):
        up = await upstreams()
        gw = GatewayProcess(
            tmp_path, {"log-format": "json", "log-level": "DEBUG", "openai-compatibility": [vendor("a", up.url, ["m"])]}
        )
        processes.append(gw.start())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json=STREAM, headers={"x-request-id": "json-1"}) as resp:
                await resp.read()
        assert gw.stop() == 0
        lines: list[dict[str, Any]] = [json.loads(line) for line in gw.log().splitlines() if line.strip()]
        [access] = [x for x in lines if x["message"] == "access" and x["path"] == "/v1/chat/completions"]
        assert (access["status"], access["vendor"], access["request_id"]) == (200, "a", "json-1")
        assert any(x["message"].startswith("cliproxy listening on") for x in lines)
        assert not any(x["logger"] == "aiosqlite" for x in lines)


class TestAccessLineOfTheServedProcess:
    """The access line `cliproxy serve` writes to stderr, where no other handler listens (the
    fast path without a `LogRecord`): exactly the line the formatters render for the record."""

    @pytest.mark.parametrize("fmt", ["text", "json"])
    async def test_access_line_is_the_formatters_line(self, upstreams, tmp_path, processes, fmt):
        up = await upstreams()
        gw = GatewayProcess(tmp_path, {"log-format": fmt, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        processes.append(gw.start())
        request_id = f"access-{uuid.uuid4().hex[:8]}"
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as resp:
                assert resp.status == 200
                size = len(await resp.read())

        def line() -> str | None:
            return next((x for x in gw.log().splitlines() if request_id in x), None)

        written = await eventually(lambda: asyncio.to_thread(line), "the access line in the process's log")
        if fmt == "json":
            fields = json.loads(written)
            assert list(fields)[:4] == ["time", "level", "logger", "message"]
            assert (fields["level"], fields["logger"], fields["message"]) == ("INFO", "cliproxy.access", "access")
            assert (fields["method"], fields["path"], fields["status"], fields["model"]) == (
                "POST",
                "/v1/chat/completions",
                200,
                "m",
            )
            assert (fields["vendor"], fields["upstream_model"], fields["attempts"], fields["outcome"]) == ("a", "m", 1, "ok")
            assert fields["bytes"] == size and fields["request_id"] == request_id
            assert isinstance(fields["latency_ms"], float) and isinstance(fields["ttfb_ms"], float)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])
        else:
            assert re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO cliproxy\.access method='POST' path='/v1/chat/completions'"
                r" status=200 model='m' vendor='a' upstream_model='m' attempts=1 latency_ms=\d+\.\d+ ttfb_ms=\d+\.\d+"
                rf" bytes={size} outcome='ok' request_id='{request_id}'",
                written,
            ), written
