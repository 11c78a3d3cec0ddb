"""The management API fuzzed from its own `/api/openapi.json` with schemathesis, against a real `cliproxy serve`.

For every operation of the served document, schemathesis generates requests that match the
schema (positive) and requests that break it (negative), each sent with the management key to a
real gateway process. Every answer must be documented for its operation (status and content type),
match the documented response schema, and never be a 5xx (503 is documented for the calls that
wait for the database, and would show up as "undocumented" elsewhere); a request that breaks the
schema must get a 4xx. The process must still be alive, its log free of tracebacks, and its
config.yaml valid at the end.

The gateway has state worth poking: pairs auto-disabled by failing requests, a timed and a
permanent manual disable, names with `/` and `:`, a prefixed vendor. Calls that change config.yaml
are part of the fuzzing; after a fuzzed `PUT /api/config.yaml` is accepted (an empty body is a
valid config: every default, management off) the original file is put back on disk and reloaded.

Each operation runs twice per mode: with generated path parameters (mostly unknown names: 404 or
400), and with names drawn from the config (`alpha`, `org/m2`, `qwen2.5:7b`, `b/shared`, ...), so
that generated bodies reach the handlers and the write-back to config.yaml.

Bounded: `CLIPROXY_FUZZ_EXAMPLES` examples per operation, mode and pass (default 8), within
`CLIPROXY_FUZZ_SECONDS` (default 30; modes and operations not started by then are skipped).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from cliproxy.services.config_file import atomic_write
from cliproxy.services.config_loader import load_config
from cliproxy.web.admin import ENDPOINTS
from cliproxy.web.admin.openapi import build_document, openapi_path
from tests.helpers import vendor
from tests.processes import GatewayProcess

EXAMPLES = int(os.environ.get("CLIPROXY_FUZZ_EXAMPLES", "8"))
BUDGET_SECONDS = float(os.environ.get("CLIPROXY_FUZZ_SECONDS", "30"))
MGMT_KEY = "fuzz-management-key-0123456789"
AUTH = {"Authorization": f"Bearer {MGMT_KEY}"}
DEAD = "http://127.0.0.1:9/v1"  # nothing listens: every attempt is a connection error


def _config() -> dict[str, Any]:
    return {
        "remote-management": {"secret-key": MGMT_KEY},
        "request-retry": 0,
        "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 600},
        "openai-compatibility": [
            vendor("alpha", DEAD, ["m1", {"name": "org/m2", "alias": "shared"}, "qwen2.5:7b"], priority=1),
            vendor("beta", DEAD, [{"name": "m1", "alias": "shared"}, {"name": "off", "enabled": False}], prefix="b"),
        ],
    }


def body_without_schema(operation: Any) -> bool:
    """An endpoint whose body has no schema is documented with `type: string`, which says nothing a
    negative case could break: `PUT /api/config.yaml` takes a YAML document (`{}` is a valid config,
    all defaults), and `POST .../enable` reads no body at all (see `TestDocument`)."""
    [endpoint] = [ep for ep in ENDPOINTS if ep.method == operation.method.upper() and openapi_path(ep.path) == operation.path]
    return endpoint.method in ("POST", "PUT", "PATCH") and endpoint.body is None


def real_names(path: str) -> list[dict[str, str]]:
    """Path parameters that name configured vendors and models (with `/`, `:`, an alias, a prefix)."""
    if path == "/api/vendors/{name}":
        return [{"name": "alpha"}, {"name": "beta"}]
    if path == "/api/vendors/{name}/models/{model}":
        return [
            {"name": "alpha", "model": "m1"},
            {"name": "alpha", "model": "org/m2"},
            {"name": "alpha", "model": "qwen2.5:7b"},
            {"name": "beta", "model": "shared"},
            {"name": "beta", "model": "off"},
        ]
    return [{"model": m} for m in ("m1", "shared", "org/m2", "b/shared", "qwen2.5:7b", "off")]


def not_a_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx other than a documented 503 (status_code_conformance judges whether it is documented)."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{case.method} {case.formatted_path} answered {response.status_code}: {response.text[:500]}")
    return None


def json_schema_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """The response schema, for JSON answers. `GET /api/config.yaml` is documented as `type: string` under
    application/yaml (the file as text); schemathesis parses YAML answers and would compare the parsed
    mapping with `string`, so that one is judged by its content type only."""
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        return response_schema_conformance(ctx, response, case)
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, json_schema_conformance]


class Fuzzer:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.session = requests.Session()
        self.original = gw.config_path.read_text(encoding="utf-8")
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.restores = 0

    def prepare_state(self) -> None:
        """Auto-disabled pairs (failing requests), a timed and a permanent manual disable."""
        for model in ("m1", "qwen2.5:7b"):
            self.session.post(self.gw.url + "/v1/chat/completions", json={"model": model, "messages": []}, timeout=10)
        r = self.session.post(
            self.gw.url + "/api/models/shared/disable?vendor=beta", json={"duration_seconds": 900}, headers=AUTH, timeout=10
        )
        assert r.status_code == 200, r.text
        r = self.session.post(self.gw.url + "/api/models/org%2Fm2/disable", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        self.original = self.gw.config_path.read_text(encoding="utf-8")  # with the permanent disable in it
        disabled = self.session.get(self.gw.url + "/api/models/disabled", headers=AUTH, timeout=10).json()["disabled"]
        assert len(disabled) >= 4, disabled

    def restore_config(self) -> None:
        """Put the original file back after a fuzzed PUT replaced it, and wait until it runs again."""
        atomic_write(self.gw.config_path, self.original)
        deadline = time.monotonic() + 10
        while True:
            # While the management API is off (no key in the fuzzed file) this is 404 and counts nothing.
            r = self.session.get(self.gw.url + "/api/config.yaml", headers=AUTH, timeout=10)
            if r.status_code == 200 and r.text == self.original:
                break
            assert r.status_code in (200, 404), f"restoring config.yaml: {r.status_code} {r.text[:300]}"
            assert time.monotonic() < deadline, "the original config.yaml was not reloaded"
            time.sleep(0.2)
        self.restores += 1

    def run_operation(self, operation: Any, mode: GenerationMode, targeted: bool) -> None:
        """`targeted`: path parameters drawn from the configured names, so the handlers get past the 404."""
        label = f"{operation.method.upper()} {operation.path} {mode.value}{' targeted' if targeted else ''}"
        checks = list(CHECKS)
        if mode is GenerationMode.NEGATIVE and not body_without_schema(operation):
            checks.append(negative_data_rejection)
        if targeted:
            strategy = st.one_of(
                *(operation.as_strategy(generation_mode=mode, path_parameters=p) for p in real_names(operation.path))
            )
        else:
            strategy = operation.as_strategy(generation_mode=mode)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: Any) -> None:
            response = case.call(base_url=self.gw.url, session=self.session, headers=AUTH, timeout=15)
            self.cases[label] += 1
            self.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks, headers=AUTH)
            finally:
                if operation.method.upper() == "PUT" and response.status_code == 200:
                    self.restore_config()

        fuzz()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Any:
    gw = GatewayProcess(tmp_path, _config())
    gw.start()
    yield gw
    gw.stop(timeout=10)


@pytest.mark.slow  # fuzzes every operation of a real gateway (about 8 s)
class TestManagementFuzz:
    """Schemathesis cases, positive and negative, for every documented operation: documented answers only, no 5xx."""

    def test_every_operation(self, gateway_process: GatewayProcess) -> None:
        gw = gateway_process
        fuzzer = Fuzzer(gw)
        fuzzer.prepare_state()
        document = fuzzer.session.get(gw.url + "/api/openapi.json", headers=AUTH, timeout=10).json()
        schema = schemathesis.openapi.from_dict(document)
        # A Server-Sent Events stream never ends, so it cannot be fuzzed as a request and its answer;
        # tests/test_dashboard_api.py covers /api/events/stream (auth, resume, bad Last-Event-ID, the bound).
        streams = event_streams(document)
        operations = [
            op for op in (result.ok() for result in schema.get_all_operations()) if (op.method.lower(), op.path) not in streams
        ]
        assert len(operations) == len(document_operations(document))
        started = time.monotonic()
        skipped: list[str] = []
        plan = [(op, mode, False) for mode in GenerationMode for op in operations]
        plan += [(op, mode, True) for mode in GenerationMode for op in operations if "{" in op.path]
        for operation, mode, targeted in plan:
            if time.monotonic() - started > BUDGET_SECONDS:
                skipped.append(f"{operation.method.upper()} {operation.path} {mode.value}{' targeted' if targeted else ''}")
                continue
            fuzzer.run_operation(operation, mode, targeted)
        elapsed = time.monotonic() - started
        assert gw.process is not None and gw.process.poll() is None, gw.log()[-3000:]
        log = gw.log()
        assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
        load_config(gw.config_path)  # whatever the fuzzed PATCHes wrote, the file is valid
        total = sum(fuzzer.cases.values())
        print(
            f"\nmanagement fuzz: {total} cases over {len(fuzzer.cases)} operation/mode pairs in {elapsed:.1f} s, "
            f"statuses {dict(sorted(fuzzer.statuses.items()))}, config restored {fuzzer.restores} times, skipped {skipped}"
        )
        assert len(skipped) <= len(plan) - len(operations), skipped  # at least every operation once, however slow the machine
        assert fuzzer.statuses[200] > 0 and total >= len(operations) * 2


def document_operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete") and (method, path) not in event_streams(document)
    ]


def event_streams(document: dict[str, Any]) -> set[tuple[str, str]]:
    """The operations that answer with a never-ending `text/event-stream`."""
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if "text/event-stream" in op.get("responses", {}).get("200", {}).get("content", {})
    }


class TestDocument:
    """What the fuzzing showed about the document itself."""

    def test_enable_documents_no_request_body(self) -> None:
        operation = build_document()["paths"]["/api/models/{model}/enable"]["post"]
        assert "requestBody" not in operation or not operation["requestBody"]["required"]
