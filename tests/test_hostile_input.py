"""Hostile client input: malformed, oversized, slow bodies and absurd headers never get a 5xx or break the gateway.

The property tests (hypothesis, bounded) drive both the pure body functions and the real gateway;
the gateway-level ones check every answer against an oracle built on `json.loads`, so a 200 is as
much a failure as a 500 when the body should have been refused. Requests that are not valid HTTP
(header lines over 8190 bytes, more than 128 headers, control characters) never reach cliproxy:
aiohttp's parser refuses them with a plain-text 400 (`TestBeyondTheHttpParser`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cliproxy.core.body import ClientRequest, parse_client_body, rewrite_model
from cliproxy.core.errors import InvalidRequest
from tests.helpers import (
    AUTH,
    BODY_LIMIT,
    GOOD_BODY,
    assert_openai_error,
    assert_still_answers,
    eventually,
    plain_gateway_config,
    raw_request,
    request_head,
    vendor,
)

LIMIT = BODY_LIMIT

# Bounded fuzzing: no example database in the working tree, no deadline (a shared CI box is slow).
_BOUNDED = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def fuzz(examples: int) -> settings:
    return settings(_BOUNDED, max_examples=examples)


# ------------------------------------------------------------------------------------ strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: How a top-level key may be spelt in the raw JSON: escaped spellings are the same key to a parser.
_KEY_SPELLINGS = ['"model"', '"mod\\u0065l"', '"\\u006dodel"', '"stream"', '"messages"', '"models"', '"MODEL"', '"Mod\\u0045l"']
#: Strings that look like the parts the model rewrite scans for.
tricky_text = st.sampled_from(
    ["model", '"model": "x"', '\\"model\\"', "{[", "]}", "\\", '"', "mod\\u0065l", "\u00e9\U0001f600"]
) | st.text(max_size=12)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _enormous(length: int) -> bytes:
    return _dumps({"model": "m", "messages": [{"role": "user", "content": "a" * length}]})


def _huge_number(literal: str) -> bytes:
    return b'{"model":"m","max_tokens":' + literal.encode() + b"}"


def _serialise(pairs: list[tuple[str, Any]], ensure_ascii: bool, ws: str) -> bytes:
    """An object from (key spelling, value) pairs, written by hand so keys can repeat."""
    inner = ",".join(f"{ws}{key}{ws}:{ws}{json.dumps(value, ensure_ascii=ensure_ascii)}{ws}" for key, value in pairs)
    return ("{" + inner + "}").encode()


def _nested(depth: int, kind: str) -> bytes:
    if kind == "[":
        inner = b"[" * depth + b"]" * depth
    else:
        inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"model":"m","x":' + inner + b"}"


wrong_types = st.fixed_dictionaries(
    {},
    optional={"model": st.just("m") | json_values, "stream": st.booleans() | json_values, "messages": json_values},
).map(_dumps)
deep_nesting = st.builds(_nested, st.sampled_from([900, 1100, 5000, 100_000]), st.sampled_from(["[", "{"]))
huge_numbers = st.one_of(
    st.sampled_from([4300, 4301, 100_000]).map(lambda digits: "9" * digits),  # int() refuses over 4300 digits
    st.sampled_from(["1e999999", "-1e999999", "1" + "0" * 400 + ".5", "123456789012345678901234567890", "-0", "1E-99999"]),
).map(_huge_number)
invalid_utf8 = st.builds(
    lambda bad, where: (
        (b'{"model":"m","messages":[{"role":"user","content":"hi' + bad + b'"}]}') if where else (b'{"model":"m' + bad + b'"}')
    ),
    st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf5\x80\x80\x80", b"\xc0\xaf", b"\x80"]),
    st.booleans(),
)
enormous_strings = st.sampled_from([100_000, LIMIT - 100, LIMIT + 1, 3 * LIMIT]).map(_enormous)
duplicate_keys = st.lists(st.tuples(st.sampled_from(_KEY_SPELLINGS), st.just("m") | json_values), min_size=1, max_size=5).map(
    lambda pairs: _serialise(pairs, True, "")
)

PAD = 70 * 1024  # past the size from which parse_client_body parses and finds the model spans in one pass


_BREAKS = {
    "whole": lambda b: b,
    "truncated": lambda b: b[: len(b) * 2 // 3],
    "trailing_comma": lambda b: b[:-1] + b",}",
    "trailing_garbage": lambda b: b + b" x",
    "trailing_space": lambda b: b + b" \r\n\t",
    "array_around": lambda b: b"[" + b + b"]",
    "leading_space": lambda b: b"\n " + b,
}
large_bodies = st.builds(
    lambda pairs, at, ensure_ascii, ws, breaking: _BREAKS[breaking](
        _serialise(pairs[:at] + [('"pad"', "p" * PAD)] + pairs[at:], ensure_ascii, ws)
    ),
    st.lists(st.tuples(st.sampled_from(_KEY_SPELLINGS), st.just("m") | tricky_text | json_values), max_size=5),
    st.integers(0, 5),
    st.booleans(),
    st.sampled_from(["", " ", "\n\t"]),
    st.sampled_from(sorted(_BREAKS)),
)

hostile_bodies = st.one_of(
    large_bodies,
    wrong_types,
    json_values.map(_dumps),
    st.binary(max_size=64),
    deep_nesting,
    huge_numbers,
    invalid_utf8,
    enormous_strings,
    duplicate_keys,
)


def _judge(body: bytes, loads: Any) -> tuple[int, str | None]:
    try:
        payload = loads(body)
    except (ValueError, RecursionError):
        return 400, "invalid_json"
    if not isinstance(payload, dict):
        return 400, "invalid_json"
    if sum(key.lower() == "model" for key, _ in json.loads(body, object_pairs_hook=list)) > 1:
        return 400, "duplicate_model"
    model = payload.get("model")
    if model is None:
        return 400, "missing_model"
    if not isinstance(model, str) or not model:
        return 400, "invalid_model"
    stream = payload.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        return 400, "invalid_type"
    if model != "m":
        return 404, "model_not_found"
    return 200, None


def expected(body: bytes) -> set[tuple[int, str | None]]:
    """The answers the gateway may give for `body` (model `m` is the only one routed).

    `json.loads(bytes)` also takes UTF-16/32, a BOM and encoded surrogates; a gateway that reads
    bodies as strict UTF-8 refuses those. Either is accepted here (see RELIABILITY_NOTES.md).
    """
    if len(body) > LIMIT:
        return {(413, "request_too_large")}
    if not body:
        return {(400, "invalid_json")}
    return {_judge(body, json.loads), _judge(body, lambda b: json.loads(b.decode("utf-8")))}


def _stray_handlers() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == "RequestHandler._handle_request"]


def _new_handlers(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in _stray_handlers() if t not in before]


@pytest.fixture
async def gw(upstreams, gateway):
    up = await upstreams(chunks=2)
    return await gateway(plain_gateway_config(up.url))


def _same_but_model(before: list[tuple[str, Any]], after: list[tuple[str, Any]], new: str) -> None:
    """`after` has the pairs of `before`, each top-level `model` string replaced by `new`."""
    assert [k for k, _ in after] == [k for k, _ in before]
    for (key, old), (_, now) in zip(before, after, strict=True):
        if key == "model" and isinstance(old, str):
            assert now == new
        else:
            assert json.dumps(now) == json.dumps(old)  # compared as JSON text: NaN equals NaN there


@dataclass
class Recording:
    """A gateway and the raw bodies its upstream received."""

    gw: Any
    bodies: list[bytes] = field(repr=False)  # megabytes: kept out of hypothesis' reports


@pytest.fixture
async def recording_gateway(aiohttp_server, gateway):
    """A gateway whose only vendor serves the alias `m` as `up-m` and records the raw bodies it gets."""
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"object": "chat.completion", "choices": []})

    upstream = web.Application(client_max_size=4 * LIMIT)
    upstream.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(upstream)
    gw = await gateway(
        {
            "api-keys": ["client-key"],
            "max-body-bytes": LIMIT,
            "openai-compatibility": [vendor("a", str(server.make_url("/v1")), [{"name": "up-m", "alias": "m"}])],
        }
    )
    return Recording(gw, bodies)


# ------------------------------------------------------------------------------- pure functions


class TestParseClientBody:
    """Any bytes parse to a request or an `InvalidRequest` (400), exactly as `json.loads` judges them."""

    @fuzz(300)
    @given(body=hostile_bodies)
    def test_any_body_is_a_request_or_a_400(self, body):
        allowed = expected(body)
        if (413, "request_too_large") in allowed:
            return  # refused before parsing
        try:
            parsed = parse_client_body(body)
        except InvalidRequest as error:
            assert error.status == 400
            assert (400, error.code) in allowed
        else:
            assert isinstance(parsed, ClientRequest)
            assert {s for s, _ in allowed} & {200, 404}

    @pytest.mark.parametrize("pad", [0, PAD], ids=["small", "large"])
    @pytest.mark.parametrize(
        "keys",
        [
            ('"model"', '"MODEL"'),
            ('"model"', '"Model"'),
            ('"MODEL"', '"model"'),
            ('"model"', '"model"'),
            ('"model"', '"mod\\u0065l"'),
            ('"model"', '"\\u004dODEL"'),
        ],
    )
    def test_a_second_model_key_in_any_case_or_escaping_is_refused(self, keys, pad):
        """Go's encoding/json matches keys ignoring case and takes the last: one model routed, another run."""
        first, second = keys
        body = f'{{{first}: "ok", "pad": "{"p" * pad}", {second}: "gpt-4-very-expensive"}}'.encode()
        with pytest.raises(InvalidRequest) as caught:
            parse_client_body(body)
        assert (caught.value.status, caught.value.code, caught.value.param) == (400, "duplicate_model", "model")

    @pytest.mark.parametrize("pad", [0, PAD], ids=["small", "large"])
    def test_model_like_keys_that_are_not_model_pass(self, pad):
        body = f'{{"model": "ok", "models": ["a"], "pad": "{"p" * pad}", "modeL_x": 1, "messages": [{{"MODEL": "inner is fine"}}]}}'.encode()
        assert parse_client_body(body).model == "ok"

    @pytest.mark.parametrize("kind", ["[", "{"])
    def test_100k_nested_levels_are_invalid_json(self, kind):
        with pytest.raises(InvalidRequest) as caught:
            parse_client_body(_nested(100_000, kind))
        assert caught.value.code == "invalid_json" and "too deeply nested" in caught.value.message


class TestRewriteModel:
    """`rewrite_model` changes every top-level `model` string and nothing else, whatever the serialisation."""

    @fuzz(200)
    @given(
        items=st.lists(
            st.tuples(
                tricky_text,
                st.recursive(
                    json_scalars | tricky_text,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(tricky_text, c, max_size=3),
                    max_leaves=8,
                ),
            ),
            max_size=6,
        ),
        position=st.integers(0, 6),
        model=tricky_text,
        new=tricky_text,
        ensure_ascii=st.booleans(),
        indent=st.sampled_from([None, 0, 2, "\t"]),
        separators=st.sampled_from([None, (",", ":"), (", ", ": "), (" ,\r\n", " \t:\n ")]),
    )
    def test_model_rewritten_rest_unchanged(self, items, position, model, new, ensure_ascii, indent, separators):
        rest = {k: v for k, v in items if k != "model"}
        ordered = list(rest.items())
        ordered.insert(min(position, len(ordered)), ("model", model))
        body = json.dumps(dict(ordered), ensure_ascii=ensure_ascii, indent=indent, separators=separators).encode()
        out = json.loads(rewrite_model(body, new))
        assert out.pop("model") == new
        assert json.dumps(out) == json.dumps(rest)  # as JSON text: NaN equals NaN there

    @fuzz(200)
    @given(
        items=st.lists(st.tuples(tricky_text, json_values), max_size=5),
        position=st.integers(0, 5),
        model=tricky_text.filter(bool),
        new=tricky_text,
        ensure_ascii=st.booleans(),
        separators=st.sampled_from([None, (",", ":"), (" ,\r\n", " \t:\n ")]),
    )
    def test_spans_found_while_parsing_are_the_scans(self, items, position, model, new, ensure_ascii, separators):
        """`parse_client_body` finds the usual body's one `model` span without the walk: the same span."""
        ordered = [(k, v) for k, v in items if k.lower() != "model"]
        ordered.insert(min(position, len(ordered)), ("model", model))
        body = json.dumps(dict(ordered), ensure_ascii=ensure_ascii, separators=separators).encode()
        parsed = parse_client_body(body)
        assert parsed.model == model
        assert rewrite_model(body, new, parsed.model_spans) == rewrite_model(body, new)

    @fuzz(200)
    @given(
        pairs=st.lists(
            st.tuples(
                st.sampled_from(_KEY_SPELLINGS + ['"Model"', '"x"']),
                st.sampled_from(["", " ", "\n\t", "\r\n  "]),
                tricky_text | json_values,
            ),
            min_size=1,
            max_size=6,
        ),
        new=tricky_text,
        pad=st.booleans(),
    )
    def test_every_duplicate_and_escaped_model_key_is_rewritten(self, pairs, new, pad):
        if pad:
            pairs = [*pairs, ('"pad"', "", "p" * PAD)]
        body = ("{" + ",".join(f"{ws}{key}{ws}:{ws}{json.dumps(value)}{ws}" for key, ws, value in pairs) + "}").encode()
        before = json.loads(body, object_pairs_hook=list)
        after = json.loads(rewrite_model(body, new), object_pairs_hook=list)
        _same_but_model(before, after, new)


# ------------------------------------------------------------------------------ through the gateway


class TestHostileBodies:
    """Malformed, deep, huge and invalid-UTF-8 bodies through the real gateway: the oracle's answer, never a 5xx."""

    @fuzz(150)
    @given(body=hostile_bodies, json_content_type=st.booleans())
    async def test_hostile_body(self, gw, body, json_content_type):
        allowed = expected(body)
        headers = {**AUTH, "Content-Type": "application/json" if json_content_type else "text/plain; charset=latin-1"}
        resp = await gw.client.post("/v1/chat/completions", data=io.BytesIO(body), headers=headers)
        answer = await resp.read()
        assert resp.status in {s for s, _ in allowed}, answer[:300]
        if resp.status != 200:
            assert (resp.status, assert_openai_error(answer)["code"]) in allowed
        await assert_still_answers(gw)

    async def test_100k_nested_arrays_are_400_not_500(self, gw):
        resp = await gw.client.post("/v1/chat/completions", data=_nested(100_000, "["), headers=AUTH)
        assert resp.status == 400
        assert_openai_error(await resp.read(), "invalid_json")
        await assert_still_answers(gw)


class TestDuplicateModelThroughTheGateway:
    """A body naming the model twice is refused before any upstream sees it."""

    async def test_model_and_MODEL_is_400_and_never_forwarded(self, recording_gateway):
        gw, bodies = recording_gateway.gw, recording_gateway.bodies
        resp = await gw.client.post("/v1/chat/completions", data=b'{"model": "m", "MODEL": "gpt-4-very-expensive"}', headers=AUTH)
        assert resp.status == 400
        assert_openai_error(await resp.read(), "duplicate_model")
        assert bodies == []


class TestModelRewriteThroughTheGateway:
    """With an alias, the upstream gets every top-level `model` string rewritten and the rest as sent, small or large body."""

    @fuzz(80)
    @given(
        pairs=st.lists(st.tuples(st.sampled_from(['"messages"', '"x"', '"models"']), tricky_text | json_values), max_size=5),
        model_key=st.sampled_from(_KEY_SPELLINGS[:3]),
        model_at=st.integers(0, 5),
        pad_at=st.none() | st.integers(0, 5),
        ensure_ascii=st.booleans(),
        ws=st.sampled_from(["", " ", "\n\t"]),
    )
    async def test_upstream_gets_the_model_rewritten(
        self, recording_gateway, pairs, model_key, model_at, pad_at, ensure_ascii, ws
    ):
        gw, bodies = recording_gateway.gw, recording_gateway.bodies
        pairs = list({json.loads(k): (k, v) for k, v in pairs}.values())  # one of each key: duplicates are not the point here
        pairs.insert(model_at, (model_key, "m"))  # the one model, in any spelling: routed as the alias
        if pad_at is not None:
            pairs.insert(pad_at, ('"pad"', "p" * PAD))
        body = _serialise(pairs, ensure_ascii, ws)
        resp = await gw.client.post("/v1/chat/completions", data=io.BytesIO(body), headers=AUTH)
        assert resp.status == 200, await resp.read()
        sent = bodies[-1]
        _same_but_model(json.loads(body, object_pairs_hook=list), json.loads(sent, object_pairs_hook=list), "up-m")
        assert len(sent) - len(body) == sum(  # nothing else moved: only the model values changed length
            len(b'"up-m"') - len(json.dumps(v, ensure_ascii=ensure_ascii).encode())
            for k, v in pairs
            if json.loads(k) == "model" and isinstance(v, str)
        )


class TestOversizedAndSlowBodies:
    """The body limit holds to the byte, declared or chunked; slow and abandoned bodies leave nothing behind."""

    @staticmethod
    def padded(size: int) -> bytes:
        head, tail = b'{"model":"m","messages":[],"pad":"', b'"}'
        return head + b"a" * (size - len(head) - len(tail)) + tail

    @pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
    async def test_limit_to_the_byte(self, upstreams, gateway, chunked):
        up = await upstreams()
        gw = await gateway({"max-body-bytes": 4096, "openai-compatibility": [vendor("a", up.url, ["m"])]})

        async def post(body: bytes):
            async def pieces():
                for start in range(0, len(body), 1000):
                    yield body[start : start + 1000]

            return await gw.client.post("/v1/chat/completions", data=pieces() if chunked else body)

        at_limit = await post(self.padded(4096))
        assert at_limit.status == 200
        over = await post(self.padded(4097))
        assert over.status == 413
        assert_openai_error(await over.read(), "request_too_large")
        assert len(up.requests) == 1

    async def test_declared_length_over_limit_is_refused_without_reading(self, gw):
        # Only the headers are sent: the gateway must answer from Content-Length alone.
        resp = await raw_request(gw.client.port, request_head([(b"Authorization", b"Bearer client-key")], 10**12), timeout=5)
        assert resp.status == 413
        assert_openai_error(resp.body, "request_too_large")
        await assert_still_answers(gw)

    async def test_slow_body_is_served(self, gw):
        # 57 bytes, 4 at a time every 20 ms: about 0.3 s.
        resp = await raw_request(
            gw.client.port,
            request_head([(b"Authorization", b"Bearer client-key")], len(GOOD_BODY)),
            GOOD_BODY,
            piece=4,
            pause=0.02,
        )
        assert resp.status == 200
        assert json.loads(resp.body)["object"] == "chat.completion"

    @pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
    async def test_abandoned_body_leaves_nothing_behind(self, gw, chunked, caplog):
        before = set(_stray_handlers())
        head = request_head(
            [(b"Authorization", b"Bearer client-key")] + ([(b"Transfer-Encoding", b"chunked")] if chunked else []),
            None if chunked else 1000,
        )
        _, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        writer.write(head + (b"10\r\n" + GOOD_BODY[:16] + b"\r\n" if chunked else GOOD_BODY[:20]))
        await writer.drain()
        await eventually(lambda: _new_handlers(before), "the handler to wait for the rest of the body")
        writer.close()
        await eventually(lambda: not _new_handlers(before), "the abandoned request's handler to end", timeout=3)
        await assert_still_answers(gw)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# ------------------------------------------------------------------------------------- headers

_TOKEN = st.from_regex(r"\AX-[A-Za-z0-9-]{1,30}\Z")
#: Headers the gateway or aiohttp look at. Left out: Content-Length and Transfer-Encoding (framing,
#: see `TestBeyondTheHttpParser`), Host (already sent; a second one is a parser 400), Content-Encoding
#: (a known 500) and Expect (anything but 100-continue gets aiohttp's plain-text 417); the last two
#: are in RELIABILITY_NOTES.md. Names are unique: the parser refuses a repeated Content-Type itself.
_INTERESTING = st.sampled_from(
    [
        b"Content-Type",
        b"Accept",
        b"Accept-Encoding",
        b"X-Forwarded-For",
        b"X-Request-Id",
        b"Cookie",
        b"TE",
        b"Range",
        b"User-Agent",
        b"Origin",
        b"Via",
        b"Forwarded",
        b"X-Api-Key-Not",
        b"Proxy-Authorization",
        b"Keep-Alive",
    ]
)
_VISIBLE = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))  # VCHAR and obs-text: legal in a field value
header_values = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(_VISIBLE[x % len(_VISIBLE)] for x in b)),  # includes invalid UTF-8
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(
        lambda s: s.strip().encode()
    ),
    st.integers(1, 8000).map(lambda n: b"v" * n),  # very long, within the parser's 8190-byte line
)
absurd_headers = st.lists(
    st.tuples(_INTERESTING | _TOKEN.map(str.encode), header_values), max_size=100, unique_by=lambda h: h[0].lower()
)


class TestAbsurdHeaders:
    """Long, many and non-ASCII header values and odd credentials: a 200 or an OpenAI-shaped 4xx, never a 5xx."""

    @fuzz(80)
    @given(headers=absurd_headers)
    async def test_absurd_headers(self, gw, headers):
        head = request_head([(b"Authorization", b"Bearer client-key"), *headers], len(GOOD_BODY))
        resp = await raw_request(gw.client.port, head, GOOD_BODY)
        assert resp.status < 500, resp.body[:300]
        if resp.status == 200:
            assert json.loads(resp.body)["object"] == "chat.completion"
        else:
            assert 400 <= resp.status < 500
            assert_openai_error(resp.body)
        await assert_still_answers(gw)

    @fuzz(80)
    @given(
        name=st.sampled_from([b"Authorization", b"x-api-key"]),
        prefix=st.sampled_from([b"", b"Bearer ", b"bearer ", b"Basic "]),
        value=st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200)
        | st.integers(1, 8000).map(lambda n: "k" * n),
    )
    async def test_wrong_credentials_are_401(self, gw, name, prefix, value):
        # Valid UTF-8 only: invalid UTF-8 in a credential is a known 500 (RELIABILITY_NOTES.md).
        head = request_head([(name, prefix + value.strip().encode())], len(GOOD_BODY))
        resp = await raw_request(gw.client.port, head, GOOD_BODY)
        assert resp.status == 401, resp.body[:300]
        assert_openai_error(resp.body, "invalid_api_key")


class TestBeyondTheHttpParser:
    """Requests that are not valid HTTP are refused by aiohttp's parser (plain-text 400) before cliproxy runs; the gateway carries on."""

    @pytest.mark.parametrize(
        "headers",
        [
            [(b"X-Long", b"a" * 20_000)],
            [(b"X-H%d" % i, b"v") for i in range(200)],
            [(b"X-Nul", b"a\x00b")],
            [(b"X-Ctl", b"a\x01b")],
            [(b"X-Bad Name", b"v")],
            [(b"Content-Length", b"-1")],
            [(b"Transfer-Encoding", b"chunked")],  # with a Content-Length too: request smuggling shape
        ],
        ids=["line_over_8190", "200_headers", "nul", "control_char", "space_in_name", "negative_length", "length_and_chunked"],
    )
    async def test_refused_with_400_and_gateway_carries_on(self, gw, headers):
        head = request_head([(b"Authorization", b"Bearer client-key"), *headers], len(GOOD_BODY))
        resp = await raw_request(gw.client.port, head, GOOD_BODY)
        assert resp.status == 400
        await assert_still_answers(gw)

    async def test_content_length_overflow(self, gw):
        resp = await raw_request(gw.client.port, request_head([(b"Content-Length", b"9" * 30)], None))
        assert resp.status == 400
        await assert_still_answers(gw)
