"""`cliproxy demo`: a first run that works as printed, and stops cleanly with nothing left behind.

The real command runs as a subprocess in its own process group; the commands it prints are run
as written with bash (curl and the printed cliproxy command), the failover drill included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliproxy.demo import DemoPorts, config_text, self_command
from tests.processes import free_port


class Demo:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "demo"
        self.ports = DemoPorts(free_port(), free_port(), free_port())
        self.out = tmp_path / "demo.out"
        self.err = tmp_path / "demo.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Demo:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cliproxy",
                    "demo",
                    "--dir",
                    str(self.dir),
                    "--port",
                    str(self.ports.gateway),
                    "--primary-port",
                    str(self.ports.primary),
                    "--backup-port",
                    str(self.ports.backup),
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group
            )
        return self

    def wait_for_instructions(self, timeout: float = 30.0) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while "/_fake/faults\n" not in (text := self.out.read_text()).split("# 6.")[-1]:
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{text}\n{self.err.read_text()}"
            assert time.monotonic() < deadline, f"no instructions within {timeout}s:\n{text}\n{self.err.read_text()}"
            time.sleep(0.05)
        return text

    def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def demo(tmp_path: Path):
    started = Demo(tmp_path)
    yield started
    started.kill()


def steps(text: str) -> dict[int, list[str]]:
    """The printed commands by step number: `  # N. ...` opens a step, `  command` lines follow."""
    found: dict[int, list[str]] = {}
    step = None
    for line in text.split("Try these in another shell:", 1)[1].splitlines():
        if match := re.match(r"  # (\d+)\. ", line):
            step = int(match.group(1))
            found[step] = []
        elif line.startswith("  ") and not line.lstrip().startswith("#") and step is not None:
            found[step].append(line.strip())
    return found


def sh(command: str) -> str:
    """Run a printed command as written, in a new shell."""
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def vendor_and_attempts(headers: str) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in headers.lower().splitlines() if ":" in line)
    return fields["x-cliproxy-vendor"].strip(), fields["x-cliproxy-attempts"].strip()


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


class TestDemo:
    """The printed commands work as written: chat, stream, failover, auto-disable, status, history."""

    def test_printed_drill_then_ctrl_c(self, demo: Demo):
        printed = demo.start().wait_for_instructions()
        todo = steps(printed)
        assert sorted(todo) == [1, 2, 3, 4, 5, 6]

        [chat] = todo[1]
        answer = json.loads(sh(chat))
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
        [stream] = todo[2]
        frames = sh(stream)
        assert frames.count("data: ") > 2 and frames.rstrip().endswith("data: [DONE]")
        [which] = todo[3]
        assert vendor_and_attempts(sh(which)) == ("primary", "1")

        [make_primary_fail] = todo[4]
        assert json.loads(sh(make_primary_fail))["ok"] is True
        for _ in range(3):  # failover on each, and the third failure disables primary
            assert vendor_and_attempts(sh(which)) == ("backup", "2")
        assert vendor_and_attempts(sh(which)) == ("backup", "1")  # primary is skipped now

        status, history, disabled = todo[5]
        assert re.search(r"(?m)^primary\s+gpt-4o-mini\s+chat.*auto-disabled", sh(status))
        assert re.search(r"disabled\s+primary\s+gpt-4o-mini", sh(history))
        assert [d["vendor"] for d in json.loads(sh(disabled))["disabled"]] == ["primary"]

        [recover] = todo[6]
        assert json.loads(sh(recover))["faults_installed"] == 0

        [dashboard] = re.findall(r"The dashboard: (http://\S+/ui/)", printed)
        page = sh(f"curl -s -D - {dashboard}")
        assert page.startswith("HTTP/1.1 200") and "Content-Security-Policy" in page and "<html" in page

        assert demo.process is not None
        assert demo.stop(signal.SIGINT) == 0
        assert group_is_gone(demo.process.pid)
        assert all(refuses(port) for port in (demo.ports.gateway, demo.ports.primary, demo.ports.backup))
        assert "Traceback" not in demo.err.read_text()

    def test_sigterm_stops_it_and_a_rerun_reuses_the_same_config(self, demo: Demo):
        demo.start().wait_for_instructions()
        assert demo.stop(signal.SIGTERM) == 0
        assert demo.process is not None and group_is_gone(demo.process.pid)
        config = (demo.dir / "config.yaml").read_text()
        demo.start().wait_for_instructions()  # same ports: the same config, accepted as it is
        assert (demo.dir / "config.yaml").read_text() == config
        assert demo.stop(signal.SIGINT) == 0

    def test_a_changed_config_is_never_overwritten(self, demo: Demo):
        demo.dir.mkdir()
        edited = config_text(demo.ports, demo.dir / "demo.db").replace("priority: 10", "priority: 20")
        (demo.dir / "config.yaml").write_text(edited)
        assert demo.start().process is not None
        assert demo.process.wait(timeout=30) == 1
        err = demo.err.read_text()
        assert err.count("\n") == 1 and err.startswith(
            f"cliproxy demo: error: {demo.dir / 'config.yaml'} differs from the demo's config"
        )
        assert (demo.dir / "config.yaml").read_text() == edited

    def test_a_port_in_use_is_one_line_and_nothing_printed(self, demo: Demo):
        with socket.socket() as other:  # another program on the gateway's port
            other.bind(("127.0.0.1", demo.ports.gateway))
            other.listen()
            assert demo.start().process is not None
            assert demo.process.wait(timeout=30) == 1
        assert demo.out.read_text() == ""  # no instructions for a gateway that is not there
        assert (
            demo.err.read_text()
            == f"cliproxy demo: error: 127.0.0.1:{demo.ports.gateway} is in use (Address already in use); pick another with --port\n"
        )


class TestSelfCommand:
    """The printed `cliproxy` runs in a new shell: PATH's when it is this one, else an explicit path."""

    def test_on_path(self, tmp_path: Path):
        script = tmp_path / "bin" / "cliproxy"
        script.parent.mkdir()
        script.write_text("")
        assert self_command(str(script), "/usr/bin/python3", str(script)) == "cliproxy"

    def test_not_on_path(self, tmp_path: Path):
        script = tmp_path / ".venv" / "bin" / "cliproxy"
        script.parent.mkdir(parents=True)
        script.write_text("")
        assert self_command(str(script), "/usr/bin/python3", None) == str(script)
        assert self_command(str(script), "/usr/bin/python3", "/usr/local/bin/cliproxy") == str(script)

    def test_python_m(self):
        assert self_command("/x/cliproxy/__main__.py", "/opt/py/bin/python3", None) == "/opt/py/bin/python3 -m cliproxy"


ROOT = Path(__file__).resolve().parent.parent


class TestReadmeFirstRun:
    """README's quick start is the demo, and its first-run commands run as written in a new shell."""

    def section(self, title: str, next_title: str) -> str:
        readme = (ROOT / "README.md").read_text()
        return readme.split(f"\n## {title}\n", 1)[1].split(f"\n## {next_title}\n", 1)[0]

    def test_quick_start_is_install_then_demo(self):
        quick = self.section("Quick start", "A one-minute tour")
        first_block = re.search(r"```sh\n(.*?)```", quick, re.S).group(1)
        assert first_block.splitlines() == ["python3 -m venv .venv && .venv/bin/pip install -q .", ".venv/bin/cliproxy demo"]
        # CI runs exactly this line (.ci/run).
        assert "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q" in quick

    def test_no_command_assumes_an_activated_venv(self):
        text = self.section("Quick start", "A one-minute tour") + self.section("A one-minute tour", "Coming from CLIProxyAPI")
        blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
        assert len(blocks) >= 5
        bare = [line for block in blocks for line in block.splitlines() if re.search(r"(^|[;&|(]\s*)cliproxy\s", line)]
        assert bare == []

    def test_tour_files_are_ignored_by_git(self, tmp_path: Path):
        if not (ROOT / ".git").exists():
            pytest.skip("not a git checkout (an unpacked sdist)")
        names = ["tour.yaml", "tour.db", "tour.db-wal", "cliproxy-demo/config.yaml", "cliproxy-demo/demo.db"]
        result = subprocess.run(["git", "check-ignore", *names], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.stdout.split() == names
