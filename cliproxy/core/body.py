"""Reading and rewriting client request bodies. Pure.

The body goes upstream byte for byte except the top-level `model` value. Re-serialising a 10 MB
body (long contexts, base64 images) costs more than the whole proxy hop, so the rewrite splices
the new value into the original bytes: a scanner that jumps from string to string finds
each top-level `"model"` key (every one of them: with duplicate keys, upstream parsers disagree
on which one wins, so all are rewritten).

Large bodies (`_ONE_PASS_FROM` and up) are parsed one top-level value at a time with the json
module's own C scanner, which validates exactly as `json.loads` does and yields the spans of the
`model` values on the way, so the rewrite needs no second pass over the bytes. Anything unusual
(non-ASCII, not an object, any error) falls back to `json.loads` and the byte scanner.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]  # public in CPython, missing from typeshed
from json.scanner import make_scanner
from typing import Any

from cliproxy.core.errors import InvalidRequest

__all__ = ["ClientRequest", "Span", "parse_client_body", "rewrite_model"]

_COLON = re.compile(rb"\s*:\s*")
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as json.decoder has it
_scan_value = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed types make_scanner as a class  # json.loads' own value scanner (C when available)
#: From this size on, one pass that also finds the `model` spans beats `json.loads` plus a rescan.
_ONE_PASS_FROM = 64 * 1024

#: Where a value is in the body: [start, end) byte offsets.
Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class ClientRequest:
    model: str
    stream: bool
    #: Byte spans of every top-level `model` string value, when the parse found them on the way.
    model_spans: tuple[Span, ...] | None = None


def parse_client_body(body: bytes) -> ClientRequest:
    """Validate narrowly: a JSON object with a string `model`; everything else passes through."""
    if not body:
        raise InvalidRequest("the request body is empty; expected a JSON object with a 'model'", code="invalid_json")
    one_pass = _parse_object_once(body) if len(body) >= _ONE_PASS_FROM else None
    payload: Any
    spans: tuple[Span, ...] | None = None
    model_keys = 0
    if one_pass is not None:
        payload, spans, model_keys = one_pass
    else:
        try:
            # Strict UTF-8: json.loads(bytes) would also take UTF-16/32, which the model rewrite cannot scan.
            payload = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_json") from None
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc.msg}", code="invalid_json") from None
        except RecursionError:
            raise InvalidRequest("the request body is not valid JSON: too deeply nested", code="invalid_json") from None
        except ValueError as exc:  # an integer longer than Python's limit of 4300 digits
            raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    if one_pass is None:
        # The walk the model rewrite would make anyway (memchr speed, no second parse): it counts
        # every top-level key that is `model` to some parser and keeps the spans for the rewrite.
        found = _single_model_key(body, payload)
        model_keys, spans = found if found is not None else _top_level_model_keys(body)
    if model_keys > 1:
        # Parsers disagree on which of two `model` keys wins, and Go's encoding/json matches keys
        # ignoring case: `{"model": "cheap", "MODEL": "expensive"}` would be routed as one model
        # and run as the other, on the vendor's key.
        raise InvalidRequest(
            "the request body names the model more than once (a second 'model' key, in any case or escaping); send exactly one",
            param="model",
            code="duplicate_model",
        )
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model", code="invalid_model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    return ClientRequest(model=model, stream=bool(stream), model_spans=spans)


def _parse_object_once(body: bytes) -> tuple[dict[str, Any], tuple[Span, ...], int] | None:
    """The top-level `model` and `stream` (last one wins, as in `json.loads`), the spans of the
    `model` string values and how many top-level keys are `model` in any case, validating every
    value with json's scanner; None to fall back.

    ASCII only, so that string indices are byte offsets. Every error returns None: the caller's
    `json.loads` then raises exactly what it always raised.
    """
    if not body.isascii():
        return None
    text = body.decode("ascii")
    wanted: dict[str, Any] = {}
    spans: list[Span] = []
    model_keys = 0
    try:
        index = _WS.match(text, 0).end()  # type: ignore[union-attr]
        if text[index : index + 1] != "{":
            return None
        index = _WS.match(text, index + 1).end()  # type: ignore[union-attr]
        if text[index : index + 1] != "}":
            while True:
                if text[index : index + 1] != '"':
                    return None
                key, index = scanstring(text, index + 1, True)
                index = _WS.match(text, index).end()  # type: ignore[union-attr]
                if text[index : index + 1] != ":":
                    return None
                start = _WS.match(text, index + 1).end()  # type: ignore[union-attr]
                value, index = _scan_value(text, start)
                if len(key) == 5 and key.lower() == "model":
                    model_keys += 1
                if key == "model" or key == "stream":
                    wanted[key] = value
                    if key == "model" and isinstance(value, str):
                        spans.append((start, index))
                index = _WS.match(text, index).end()  # type: ignore[union-attr]
                if text[index : index + 1] == ",":
                    index = _WS.match(text, index + 1).end()  # type: ignore[union-attr]
                    continue
                if text[index : index + 1] != "}":
                    return None
                break
        if _WS.match(text, index + 1).end() != len(text):  # type: ignore[union-attr]
            return None
    except (ValueError, StopIteration, RecursionError):
        return None
    return wanted, tuple(spans), model_keys


def rewrite_model(body: bytes, new_model: str, spans: tuple[Span, ...] | None = None) -> bytes:
    """`body` with every top-level `"model"` value replaced by `new_model` (the body is valid JSON).

    `spans` are those `parse_client_body` found for this very body, when it did; else they are scanned for.
    """
    if spans is None:
        spans = _top_level_model_keys(body)[1]
    if not spans:
        return body
    replacement = json.dumps(new_model).encode()
    view = memoryview(body)  # slices of a view copy nothing: the join is the one copy of a 10 MB body
    parts: list[bytes | memoryview] = []
    last = 0
    for start, end in spans:
        parts.append(view[last:start])
        parts.append(replacement)
        last = end
    parts.append(view[last:])
    return b"".join(parts)


def _single_model_key(body: bytes, payload: dict[str, Any]) -> tuple[int, tuple[Span, ...]] | None:
    """The usual body's answer to `_top_level_model_keys` without walking it: when `"model"` (in
    any case) appears once in the bytes and no `\\u` escape could spell it otherwise, that one
    appearance is the only key that could be `model`, and it is a top-level key when the parsed
    object has one. None when unsure: the walk decides.
    """
    lowered = body.lower()
    at = lowered.find(b'"model"')
    if at < 0 or lowered.find(b'"model"', at + 1) >= 0 or b"\\u" in body:
        return None
    if "model" not in payload:
        # The one appearance is a key in some other case (`"MODEL"`), or not a top-level key.
        return None
    colon = _COLON.match(body, at + 7)
    if colon is None or not isinstance(payload["model"], str):
        return 1, ()
    start = colon.end()
    end = body.find(b'"', start + 1)
    while end > 0 and body[end - 1] == 0x5C and _escaped(body, end):
        end = body.find(b'"', end + 1)
    return 1, ((start, end + 1),)


def _top_level_model_keys(body: bytes) -> tuple[int, tuple[Span, ...]]:
    """How many top-level keys are `model` ignoring case and escapes, and the spans of the string
    values of those spelt exactly `model` (after unescaping).

    Walks from string to string with `bytes.find` (memchr speed: a 10 MB base64 string is skipped
    in about a millisecond) and counts brackets only in the short stretches between strings.
    """
    depth = 0
    value_at = -1  # where a string value of a top-level "model" key would start
    position = 0
    keys = 0
    spans: list[Span] = []
    find = body.find
    while True:
        start = find(b'"', position)
        if start < 0:
            break
        between = body[position:start]
        if between:
            depth += between.count(b"{") + between.count(b"[") - between.count(b"}") - between.count(b"]")
        end = find(b'"', start + 1)
        while end > 0 and body[end - 1] == 0x5C and _escaped(body, end):
            end = find(b'"', end + 1)
        if end < 0:
            break
        position = end + 1
        if start == value_at:
            spans.append((start, position))
        elif depth == 1 and end - start < 64 and (name := _model_key(body[start:position])) is not None:
            colon = _COLON.match(body, position)
            if colon is not None:  # a key, not a string value
                keys += 1
                if name == "model":
                    value_at = colon.end()
    return keys, tuple(spans)


def _escaped(body: bytes, quote: int) -> bool:
    """Is the quote at `quote` escaped (preceded by an odd number of backslashes)?"""
    backslashes = 0
    index = quote - 1
    while body[index] == 0x5C:
        backslashes += 1
        index -= 1
    return backslashes % 2 == 1


def _model_key(text: bytes) -> str | None:
    """The key `text` (a quoted JSON string) stands for, when it is `model` ignoring case; else None."""
    if text == b'"model"':
        return "model"
    if b"\\" not in text:
        return text[1:-1].decode("ascii") if len(text) == 7 and text.lower() == b'"model"' else None
    # Escaped spellings such as "mod\u0065l" are the same key to a JSON parser.
    name = json.loads(text)
    return name if len(name) == 5 and name.lower() == "model" else None
