"""The benchmark cannot rot: `scripts/bench.py --quick --json` runs every scenario and reports every row.

Only the shape of the results is checked, never a figure: performance targets are checked by
running the benchmark itself (see scripts/BENCH_RESULTS.md), not by timed assertions here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a quick benchmark run (about 10 s)

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = {
    *(f"s1.c{c}.{m}" for c in (1, 16, 64, 256) for m in ("rps", "p50", "p99", "cpu_us", "added_p50")),
    "s1.c1.added_p99",
    *(f"s2.c{c}.{m}" for c in (1, 64) for m in ("rps", "ttfb_p50", "ttlb_p50", "cpu_us", "added_ttfb_p50")),
    "s2.paced.frames_per_read",
    "s2.paced.lag",
    *(f"s3.{size}mb.{m}" for size in (1, 10) for m in ("p50", "added_p50")),
    "s4.burst_ttfb_p50",
    "s4.rss_idle",
    "s4.rss_peak",
    "s4.max_open",
    "s5.rps",
    "s5.p99",
    "s5.cpu_us",
    "s6.rps",
    "s6.p99",
    "s6.answers",
    "s6.attempts",
    "s6.cpu_attempt",
    "s6.errors",
    "s6.disables",
}


@pytest.fixture(scope="module")
def results() -> dict:
    """One quick run for the whole module; generous timeout for a loaded CI box (it takes ~15 s)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


class TestQuickRun:
    """A quick run produces every row of every scenario, as valid JSON with numbers where numbers belong."""

    def test_every_row_is_reported_once(self, results: dict) -> None:
        ids = [row["id"] for row in results["rows"]]
        assert sorted(ids) == sorted(set(ids))
        assert set(ids) == EXPECTED_ROWS

    def test_the_measured_values_are_finite_numbers(self, results: dict) -> None:
        for row in results["rows"]:
            if row["id"] == "s6.disables":
                continue  # a count that may legitimately be unknown when /metrics is not served
            for column in row["columns"]:
                value = row["values"][column]
                if column == "direct" and value is None:
                    continue  # "added over direct" and RSS rows have no direct value
                assert isinstance(value, (int, float)) and math.isfinite(value), (row["id"], column, value)

    def test_every_load_run_got_answers(self, results: dict) -> None:
        for run in results["runs"]:
            assert run["requests"] >= 1, run
            assert run["ok"] >= 1, run

    def test_the_throughput_runs_use_wrk_when_it_is_installed(self, results: dict) -> None:
        expected = "wrk" if shutil.which("wrk") else "aiohttp"
        assert results["settings"]["loadgen"] == expected
        throughput = [run for run in results["runs"] if run["label"].startswith(("s1.", "s5"))]
        assert throughput and {run["loadgen"] for run in throughput} == {expected}
        # What wrk cannot measure stays on the aiohttp generator whichever runs the rest.
        assert {run["loadgen"] for run in results["runs"] if run["label"].startswith(("s2.paced", "s3", "s4", "s6"))} == {
            "aiohttp"
        }

    def test_the_machine_and_command_are_recorded(self, results: dict) -> None:
        assert results["machine"]["nproc"] >= 1
        assert results["machine"]["python"]
        assert results["command"].startswith("python scripts/bench.py")

    def test_the_table_renders_every_row(self, results: dict, tmp_path: Path) -> None:
        saved = tmp_path / "results.json"
        saved.write_text(json.dumps(results))
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "bench.py"), "--table-from", str(saved)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        table = done.stdout
        for row in results["rows"]:
            assert row["metric"] in table


def test_the_aiohttp_generator_still_runs_the_throughput_scenarios() -> None:
    """The fallback for machines without wrk (the default generator there) keeps working."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", "--loadgen", "aiohttp", "--scenarios", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert {row["id"] for row in results["rows"]} == {row for row in EXPECTED_ROWS if row.startswith("s1.")}
    assert {run["loadgen"] for run in results["runs"]} == {"aiohttp"}
    assert all(run["ok"] >= 1 for run in results["runs"])
