"""The soak, bounded for CI: `scripts/soak.py` for 15 s with 200 clients and 20% of upstream attempts failing.

Longer runs: `python scripts/soak.py --duration 600 --clients 300`, or here
`CLIPROXY_SOAK_SECONDS=120 CLIPROXY_SOAK_CLIENTS=300 python -m pytest tests/test_soak.py -s`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a 15 s soak

SECONDS = float(os.environ.get("CLIPROXY_SOAK_SECONDS", "15"))
CLIENTS = int(os.environ.get("CLIPROXY_SOAK_CLIENTS", "200"))
ROOT = Path(__file__).resolve().parent.parent


class TestSoak:
    """Hundreds of clients, failing upstreams: every answer documented, no fd/memory growth, events match the metrics."""

    def test_bounded_soak(self, tmp_path: Path) -> None:
        summary_path = tmp_path / "summary.json"
        argv = [
            sys.executable,
            str(ROOT / "scripts" / "soak.py"),
            "--duration",
            str(SECONDS),
            "--clients",
            str(CLIENTS),
            "--warmup",
            "2",
            "--json",
            str(summary_path),
            "--workdir",
            str(tmp_path / "run"),
        ]
        done = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 150)
        print(done.stdout)
        assert summary_path.exists(), done.stdout + done.stderr
        summary = json.loads(summary_path.read_text())
        log = tmp_path / "run" / "cliproxy.log"
        assert summary["violations"] == [], done.stdout + (log.read_text()[-3000:] if log.exists() else "")
        assert done.returncode == 0, done.stdout + done.stderr
        classes = summary["classes"]
        assert classes["unexpected"] == 0
        assert summary["requests"] >= CLIENTS  # every client got answers
        assert classes["failover_success"] > 0 and classes["success"] > classes["failover_success"]
        assert summary["events"].get("disabled", 0) > 0  # pairs tripped ...
        # ... and all came back: one `enabled` per auto-disable and per rate limit (a rate limit extended by a
        # later Retry-After is one more `rate-limited` event for the same period)
        events = summary["events"]
        assert events["disabled"] <= events.get("enabled", 0) <= events["disabled"] + events.get("rate-limited", 0)
        assert summary["disabled_at_end"] == 0
        assert summary["upstream_streams_in_flight"] == 0
