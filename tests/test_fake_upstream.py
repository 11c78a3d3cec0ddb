"""Tests for the fake OpenAI-compatible upstream, driven by a real aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cliproxy.fake_upstream import FakeUpstream, Fault
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(chunks=3, seed=1)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


async def chat(session: aiohttp.ClientSession, fake: FakeUpstream, model: str = "m1", **extra: object) -> aiohttp.ClientResponse:
    return await session.post(f"{fake.url}/chat/completions", json={"model": model, "messages": [], **extra})


class TestChat:
    """Chat completions look like OpenAI's, streamed and not."""

    async def test_non_stream(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with await chat(session, fake, "gpt-a") as r:
            assert r.status == 200
            body = await r.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == "gpt-a"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert "hello from gpt-a" in body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == 3

    async def test_stream_framing(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with await chat(session, fake, "gpt-s", stream=True) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            text = await r.text()
        assert text.endswith("data: [DONE]\n\n")
        data = sse_data(text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert len(chunks) == 3
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-s" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks).startswith("hello from gpt-s")
        assert fake.completed_streams == 1 and fake.streams_in_flight == 0

    async def test_header_overrides_and_usage_chunk(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(
            f"{fake.url}/chat/completions",
            json={"model": "m", "stream": True, "stream_options": {"include_usage": True}},
            headers={"x-fake-chunks": "7", "x-fake-chunk-delay": "0.001"},
        ) as r:
            data = sse_data(await r.text())
        chunks = [json.loads(d) for d in data[:-1]]
        assert len(chunks) == 8
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7

    async def test_records_requests(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(
            f"{fake.url}/chat/completions", json={"model": "rec"}, headers={"Authorization": "Bearer k"}
        ) as r:
            await r.read()
        (req,) = fake.requests
        assert (req.method, req.path, req.model) == ("POST", "/v1/chat/completions", "rec")
        assert req.headers["Authorization"] == "Bearer k"
        assert req.json == {"model": "rec"}


class TestOtherEndpoints:
    """Completions, responses, embeddings, models and bad bodies."""

    async def test_completions(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{fake.url}/completions", json={"model": "c", "prompt": "x"}) as r:
            body = await r.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"].startswith("hello from c")
        async with session.post(f"{fake.url}/completions", json={"model": "c", "stream": True}) as r:
            data = sse_data(await r.text())
        assert data[-1] == "[DONE]" and len(data) == 4

    async def test_responses(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{fake.url}/responses", json={"model": "r", "input": "hi"}) as r:
            body = await r.json()
        assert body["object"] == "response" and body["model"] == "r"
        assert body["output"][0]["content"][0]["text"].startswith("hello from r")
        async with session.post(f"{fake.url}/responses", json={"model": "r", "stream": True}) as r:
            text = await r.text()
        events = [block.split("\n")[0] for block in text.strip().split("\n\n")]
        assert events[0] == "event: response.created"
        assert events.count("event: response.output_text.delta") == 3
        assert events[-1] == "event: response.completed"

    async def test_embeddings(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{fake.url}/embeddings", json={"model": "e", "input": ["a", "b"]}) as r:
            body = await r.json()
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert all(isinstance(x, float) for x in body["data"][0]["embedding"])
        # The openai SDK asks for base64 by default.
        async with session.post(
            f"{fake.url}/embeddings", json={"model": "e", "input": "a", "encoding_format": "base64", "dimensions": 4}
        ) as r:
            raw = base64.b64decode((await r.json())["data"][0]["embedding"])
        assert len(struct.unpack("<4f", raw)) == 4

    async def test_models(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{fake.url}/models") as r:
            body = await r.json()
        assert body["object"] == "list" and body["data"][0]["object"] == "model"

    async def test_malformed_request_is_400(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{fake.url}/chat/completions", data=b"{nope") as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert fake.requests[-1].json is None


class TestOpenAISdk:
    """The official SDK can talk to the fake (base64 embeddings, typed streams)."""

    async def test_sdk_round_trip(self, fake: FakeUpstream) -> None:
        import openai  # imported here: only this test needs the (slow to import) SDK

        async with openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as client:
            chat_reply = await client.chat.completions.create(model="sdk", messages=[{"role": "user", "content": "hi"}])
            assert chat_reply.choices[0].message.content == "hello from sdk chunk1 chunk2"
            stream = await client.chat.completions.create(model="sdk", messages=[], stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream]).startswith("hello from sdk")
            embeddings = await client.embeddings.create(model="e", input=["a", "b"])
            assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 8
            response = await client.responses.create(model="r", input="hi")
            assert response.output_text.startswith("hello from r")


class TestFaults:
    """Every fault kind is visible to a plain HTTP client."""

    async def test_status_with_retry_after(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail("bad", Fault(status=429, headers={"Retry-After": "7"}))
        async with await chat(session, fake, "bad") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "7"
            assert "error" in await r.json()
        async with await chat(session, fake, "good") as r:
            assert r.status == 200  # other models are unaffected

    async def test_reset_before_headers(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(reset_before_headers=True))
        with pytest.raises(aiohttp.ClientConnectionError):
            async with await chat(session, fake, stream=True):
                pass
        assert fake.disconnects == 0  # our own reset is not a client disconnect

    async def test_reset_mid_stream(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(reset_after_chunks=2))
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with await chat(session, fake, stream=True) as r:
                assert r.status == 200
                async for piece in r.content.iter_any():
                    received += piece
        assert received.count(b"data: ") == 2 and b"[DONE]" not in received
        assert fake.completed_streams == 0

    async def test_reset_mid_body(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(reset_after_chunks=0))
        with pytest.raises(aiohttp.ClientPayloadError):
            async with await chat(session, fake) as r:
                await r.read()

    async def test_malformed_json_and_html(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail("j", Fault(malformed_json=True))
        fake.fail("h", Fault(html_200=True))
        async with await chat(session, fake, "j") as r:
            assert r.status == 200 and r.content_type == "application/json"
            with pytest.raises(json.JSONDecodeError):
                json.loads(await r.read())
        async with await chat(session, fake, "h") as r:
            assert r.status == 200 and r.content_type == "text/html"

    async def test_no_done(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(no_done=True))
        async with await chat(session, fake, stream=True) as r:
            data = sse_data(await r.text())
        assert len(data) == 3 and "[DONE]" not in data

    async def test_big_body(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(big_body_bytes=300_000))
        async with await chat(session, fake) as r:
            assert r.content_length == 300_000
            body = await r.read()
        assert len(body) == 300_000 and json.loads(body)["object"] == "chat.completion"

    async def test_times_then_healthy(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail("m1", Fault(status=503, times=1))
        statuses = []
        for _ in range(3):
            async with await chat(session, fake) as r:
                statuses.append(r.status)
        assert statuses == [503, 200, 200]

    async def test_probability_is_seeded(self, session: aiohttp.ClientSession) -> None:
        async def run() -> list[int]:
            async with FakeUpstream(seed=42) as f:
                f.fail(None, Fault(status=500, probability=0.5))
                out = []
                for _ in range(20):
                    async with await chat(session, f) as r:
                        out.append(r.status)
                return out

        first, second = await run(), await run()
        assert first == second and {200, 500} == set(first)

    async def test_stall_before_headers_is_cancelled_by_client_timeout(
        self, fake: FakeUpstream, session: aiohttp.ClientSession
    ) -> None:
        fake.fail(None, Fault(stall_before_headers=30))
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await session.post(f"{fake.url}/chat/completions", json={"model": "m"}, timeout=aiohttp.ClientTimeout(total=0.1))
        assert time.monotonic() - started < 1
        await eventually(lambda: fake.disconnects == 1, timeout=1.0, interval=0.005)

    async def test_stall_after_chunks(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        fake.fail(None, Fault(stall_after_chunks=1, stall_seconds=30))
        async with await chat(session, fake, stream=True) as r:
            first = await r.content.readuntil(b"\n\n")
            assert first.startswith(b"data: {")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.content.readuntil(b"\n\n"), 0.1)
            assert fake.streams_in_flight == 1
        await eventually(lambda: fake.disconnects == 1 and fake.streams_in_flight == 0, timeout=1.0, interval=0.005)


class TestFaultValidation:
    """Nonsense faults are refused when installed, not mid-request."""

    @pytest.mark.parametrize("kwargs", [{"times": 0}, {"probability": 1.5}, {"status": 42}, {"stall_seconds": -1}])
    def test_rejects(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            Fault(**kwargs)  # type: ignore[arg-type]

    def test_from_dict_rejects_unknown_fields(self) -> None:
        with pytest.raises(ValueError, match="explode"):
            Fault.from_dict({"explode": True})


class TestDisconnectsAndShutdown:
    """The fake notices clients that leave and stops promptly."""

    async def test_client_closing_stream_counts_disconnect(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        r = await session.post(
            f"{fake.url}/chat/completions",
            json={"model": "m", "stream": True},
            headers={"x-fake-chunks": "50", "x-fake-chunk-delay": "0.01"},
        )
        await r.content.readuntil(b"\n\n")
        r.close()  # drops the connection mid-stream
        await eventually(lambda: fake.disconnects == 1, timeout=1.0, interval=0.005)
        assert fake.streams_in_flight == 0 and fake.completed_streams == 0

    async def test_stop_does_not_wait_for_stalled_handlers(self, session: aiohttp.ClientSession) -> None:
        f = FakeUpstream()
        await f.start()
        f.fail(None, Fault(stall_before_headers=30))
        pending = asyncio.create_task(chat(session, f))
        await eventually(lambda: f.request_count == 1, timeout=1.0, interval=0.005)
        started = time.monotonic()
        await f.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending
        assert f.disconnects == 0


class TestHttpControl:
    """Faults and stats can be driven over HTTP for subprocess use."""

    async def test_fault_endpoints(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        base = fake.url.removesuffix("/v1")
        async with session.post(f"{base}/_fake/faults", json={"model": "x", "status": 502, "times": 1}) as r:
            assert r.status == 201
        async with await chat(session, fake, "x") as r:
            assert r.status == 502
        async with session.post(f"{base}/_fake/faults", json={"status": 500}) as r:
            assert r.status == 201
        async with session.delete(f"{base}/_fake/faults") as r:
            assert r.status == 200
        async with await chat(session, fake, "x") as r:
            assert r.status == 200
        async with session.get(f"{base}/_fake/stats") as r:
            stats = await r.json()
        assert stats["requests"] == 2 and stats["faults_applied"] == 1
        assert {"disconnects", "streams_in_flight", "completed_streams"} <= stats.keys()

    async def test_bad_fault_is_400(self, fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
        base = fake.url.removesuffix("/v1")
        async with session.post(f"{base}/_fake/faults", json={"model": "x", "explode": True}) as r:
            assert r.status == 400


class TestCli:
    """The script runs as a subprocess, announces its URL and exits 0 on SIGTERM."""

    async def test_subprocess(self, session: aiohttp.ClientSession) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cliproxy.fake_upstream",
            "--port",
            "0",
            "--fail-rate",
            "1.0",
            "--fail-status",
            "503",
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
            assert line.startswith("listening on http://127.0.0.1:")
            base = line.split()[-1]
            async with session.post(f"{base}/v1/chat/completions", json={"model": "m"}) as r:
                assert r.status == 503
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 5) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
