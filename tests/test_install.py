"""Release-ready: what gets installed, and how the installed service starts (or refuses to).

* The sdist and the wheel hold everything an install needs (the schema as package data, LICENSE,
  README, the shipped config, the systemd unit and its installer).
* The wheel, installed into a fresh virtualenv outside the repository (no system site-packages:
  a missing dependency would show), migrates, serves a chat completion through its own
  `cliproxy fake-upstream`, and exits 0 on SIGTERM.
* `scripts/install-service.sh --prefix DIR --no-systemd` runs its real install steps (venv, wheel,
  config, state directory, unit file) under a temporary prefix.
* A permanent start-up fault prints one line, no traceback, and exits with a status the unit's
  `RestartPreventExitStatus` lists, so systemd does not restart-loop.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from cliproxy.cli import EXIT_CONFIG, EXIT_DATABASE
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def unit_restart_prevent_statuses() -> set[int]:
    text = (ROOT / "scripts" / "cliproxy.service").read_text()
    [line] = re.findall(r"(?m)^RestartPreventExitStatus=(.*)$", text)
    return {int(status) for status in line.split()}


# --------------------------------------------------------------------------------------------
# Permanent start-up faults
# --------------------------------------------------------------------------------------------


def serve_once(tmp_path: Path, config_text: str) -> subprocess.CompletedProcess[str]:
    """The real `cliproxy serve` on `config_text`, expected to give up at start-up."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "cliproxy", "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def config_for(db: Path) -> str:
    return yaml.safe_dump({"host": "127.0.0.1", "port": free_port(), "database": str(db), "openai-compatibility": []})


class TestPermanentStartupFaults:
    """Each fault: the unit does not restart on its status, stderr is one line, no traceback."""

    def assert_permanent(self, result: subprocess.CompletedProcess[str], status: int, pattern: str) -> None:
        assert result.returncode == status, result.stderr
        assert status in unit_restart_prevent_statuses()
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert re.fullmatch(r"cliproxy serve: error: " + pattern + r"\n", result.stderr), result.stderr

    def test_bad_config(self, tmp_path: Path):
        result = serve_once(tmp_path, "port: 99999\ndatabase: ./x.db\nopenai-compatibility:\n  - name: a\n")
        self.assert_permanent(
            result, EXIT_CONFIG, r"invalid configuration in .*config\.yaml: .*port: .*openai-compatibility\[0\]\.base-url: .*"
        )
        assert not (tmp_path / "x.db").exists()

    def test_failing_migration(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        with closing(sqlite3.connect(db)) as conn, conn:  # a table in the way of 0001_initial
            conn.execute("CREATE TABLE events (x)")
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(
            result, EXIT_DATABASE, r"migration 0001_initial\.sql failed at line \d+: table events already exists; .*"
        )

    def test_not_a_database(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        db.write_bytes(b"this is not an SQLite file at all" * 100)
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, rf"cannot open database {re.escape(str(db))}: file is not a database")

    def test_database_cannot_be_opened(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        db.mkdir()  # root reads any file, so "unreadable" is a path SQLite cannot open as a file
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, rf"cannot open database {re.escape(str(db))}: unable to open database file")

    def test_schema_newer_than_this_version(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        (tmp_path / "c.yaml").write_text(config_for(db))
        subprocess.run(
            [sys.executable, "-m", "cliproxy", "migrate", "--config", str(tmp_path / "c.yaml")],
            check=True,
            capture_output=True,
            timeout=30,
        )
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_future.sql', '2030-01-01T00:00:00.000Z')")
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(
            result, EXIT_DATABASE, r"database .* has schema version 99, newer than this cliproxy knows \(up to \d+\): .*"
        )


# --------------------------------------------------------------------------------------------
# The version
# --------------------------------------------------------------------------------------------


class TestVersion:
    """`--version` is the package metadata's; `python -m cliproxy` is the same command."""

    def test_version_from_the_metadata(self, tmp_path: Path):
        from importlib.metadata import version

        for command in ([sys.executable, "-m", "cliproxy"], [str(Path(sys.executable).parent / "cliproxy")]):
            result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
            assert (result.returncode, result.stdout, result.stderr) == (0, f"cliproxy {version('cliproxy')}\n", "")

    def test_fake_upstream_usage_names_the_command(self, tmp_path: Path):
        result = subprocess.run(
            [sys.executable, "-m", "cliproxy", "fake-upstream", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert result.returncode == 0 and result.stdout.startswith("usage: cliproxy fake-upstream ")


# --------------------------------------------------------------------------------------------
# The archives, and an install from them
# --------------------------------------------------------------------------------------------

#: What a checkout copy for building leaves out (local state, caches, other builds).
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.db*", "cliproxy-demo", "tour.*"
)


def clean_env() -> dict[str, str]:
    """The environment of a new shell: no activated virtualenv, no PYTHONPATH pointing at the repo."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    ours = Path(sys.prefix)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).is_relative_to(ours))
    return env


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        [self.sdist] = (root / "dist").glob("cliproxy-*.tar.gz")
        [self.wheel] = (root / "dist").glob("cliproxy-*.whl")
        self.prefix = root / "prefix"
        self.bin = self.prefix / "opt" / "cliproxy" / "venv" / "bin"
        self.timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist, the wheel built from that sdist (as `python -m build` does), and the installer run
    with them under a temporary prefix: a fresh venv (no system site-packages) outside the repo."""
    root = tmp_path_factory.mktemp("release")
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = Built(root)
    built.timings["build sdist + wheel"] = time.monotonic() - started
    started = time.monotonic()
    install = run_installer(built)
    built.timings["installer (venv + wheel + config)"] = time.monotonic() - started
    assert install.returncode == 0, install.stdout + install.stderr
    built.install_output = install.stdout  # type: ignore[attr-defined]
    return built


def run_installer(built: Built) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "install-service.sh"),
            "--prefix",
            str(built.prefix),
            "--no-systemd",
            "--from",
            str(built.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        cwd=built.root,
    )


@pytest.mark.slow  # builds the sdist and the wheel and installs them (about 50 s)
class TestArchives:
    """The sdist and the wheel hold what an install needs, the schema above all."""

    def test_sdist_contents(self, built: Built):
        with tarfile.open(built.sdist) as sdist:
            names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        needed = {
            "LICENSE",
            "README.md",
            "pyproject.toml",
            "config.yaml",
            "scripts/cliproxy.service",
            "scripts/install-service.sh",
            "cliproxy/cli/__init__.py",
        }
        needed |= {
            f"cliproxy/services/migrations/{p.name}" for p in (ROOT / "cliproxy" / "services" / "migrations").glob("*.sql")
        }
        assert needed <= names, sorted(needed - names)

    def test_wheel_contents(self, built: Built):
        from importlib.metadata import version

        with zipfile.ZipFile(built.wheel) as wheel:
            names = set(wheel.namelist())
            dist_info = f"cliproxy-{version('cliproxy')}.dist-info"
            metadata = wheel.read(f"{dist_info}/METADATA").decode()
            entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
        migrations = {
            f"cliproxy/services/migrations/{p.name}" for p in (ROOT / "cliproxy" / "services" / "migrations").glob("*.sql")
        }
        assert migrations and migrations <= names
        dashboard = {f"cliproxy/web/ui/static/{p.name}" for p in (ROOT / "cliproxy" / "web" / "ui" / "static").iterdir()}
        assert dashboard and dashboard <= names  # /ui/ reads them at start-up
        assert {
            "cliproxy/__main__.py",
            "cliproxy/cli/__main__.py",
            "cliproxy/fake_upstream/__init__.py",
            "cliproxy/fake_upstream/__main__.py",
            f"{dist_info}/licenses/LICENSE",
        } <= names
        assert "License-Expression: MIT" in metadata
        assert re.search(r"(?m)^cliproxy = cliproxy\.cli:main$", entry_points)
        assert not any(name.startswith("tests/") for name in names)


@pytest.mark.slow  # builds the sdist and the wheel and installs them (about 50 s)
class TestInstalledWheel:
    """The wheel in a fresh venv outside the repo runs from another directory, with only its own deps."""

    def test_venv_is_isolated_and_imports_the_installed_package(self, built: Built, tmp_path: Path):
        assert "include-system-site-packages = false" in (built.bin.parent / "pyvenv.cfg").read_text()
        result = subprocess.run(
            [
                str(built.bin / "python"),
                "-c",
                "import cliproxy.services.store as s; print(s.__file__); print(s.default_migrations_dir())",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(),
            cwd=tmp_path,
            check=True,
        )
        module, migrations = result.stdout.splitlines()
        assert Path(module).is_relative_to(built.bin.parent) and Path(migrations).is_relative_to(built.bin.parent)

    def test_migrate_serve_answer_and_stop(self, built: Built, tmp_path: Path):
        env = clean_env()
        cliproxy = str(built.bin / "cliproxy")
        version = subprocess.run([cliproxy, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
        assert version.returncode == 0 and re.fullmatch(r"cliproxy \d+\.\d+\.\d+\S*\n", version.stdout)
        started = time.monotonic()
        upstream_port, gateway_port = free_port(), free_port()
        upstream_log, gateway_log = tmp_path / "upstream.log", tmp_path / "gateway.log"
        upstream = spawn([cliproxy, "fake-upstream", "--port", str(upstream_port)], upstream_log, env=env, cwd=tmp_path)
        gateway: subprocess.Popen[bytes] | None = None
        try:
            wait_for_line(upstream_log, f"listening on http://127.0.0.1:{upstream_port}", upstream)
            config = tmp_path / "small.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "host": "127.0.0.1",
                        "port": gateway_port,
                        "database": "./state/small.db",
                        "api-keys": ["k"],
                        "openai-compatibility": [
                            {
                                "name": "fake",
                                "base-url": f"http://127.0.0.1:{upstream_port}/v1",
                                "models": [{"name": "gpt-4o-mini", "alias": "chat"}],
                            }
                        ],
                    }
                )
            )
            migrate = subprocess.run(
                [cliproxy, "migrate", "--config", "small.yaml"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30
            )
            assert (migrate.returncode, migrate.stderr) == (0, "")
            shipped = sorted(p.name for p in (ROOT / "cliproxy" / "services" / "migrations").glob("*.sql"))
            db = tmp_path / "state" / "small.db"
            assert migrate.stdout == "".join(f"{db}: applied {name}\n" for name in shipped)
            assert shipped[0] == "0001_initial.sql"
            gateway = spawn([cliproxy, "serve", "--config", "small.yaml"], gateway_log, env=env, cwd=tmp_path)
            answer = post_when_up(
                f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
                gateway,
                gateway_log,
                {"model": "chat", "messages": [{"role": "user", "content": "hello"}]},
                key="k",
            )
            assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=30) == 0
            built.timings["migrate, serve, one answer, stop"] = time.monotonic() - started
            print(f"\ninstall timings (s): { {k: round(v, 1) for k, v in built.timings.items()} }")
        finally:
            for process in (gateway, upstream):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
        assert upstream.returncode == 0


def spawn(command: list[str], log: Path, *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)


def wait_for_line(log: Path, line: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text().splitlines():
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {line!r} within {timeout}s:\n{log.read_text()}"
        time.sleep(0.05)


def post_when_up(url: str, process: subprocess.Popen[bytes], log: Path, body: dict, *, key: str, timeout: float = 30.0) -> dict:
    """POST `body` once the server answers; fail at once if the process exits first."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before answering:\n{log.read_text()}")
        try:
            with opener.open(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@pytest.mark.slow  # builds the sdist and the wheel and installs them (about 50 s)
class TestInstaller:
    """`install-service.sh --prefix DIR --no-systemd` runs its real install steps under DIR."""

    def test_layout(self, built: Built):
        p = built.prefix
        config = p / "etc" / "cliproxy" / "config.yaml"
        assert (built.bin / "cliproxy").is_file()
        assert (p / "var" / "lib" / "cliproxy").is_dir()
        assert config.read_text().startswith((ROOT / "config.yaml").read_text().splitlines()[0])
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        assert re.search(rf"(?m)^database: {re.escape(str(p / 'var/lib/cliproxy/cliproxy.db'))}\b", config.read_text())
        unit = (p / "etc" / "systemd" / "system" / "cliproxy.service").read_text()
        assert f"ExecStart={built.bin / 'cliproxy'} serve --config {config}\n" in unit
        assert f"ReadWritePaths={p / 'var/lib/cliproxy'} {p / 'etc/cliproxy'}\n" in unit
        assert "(not enabled: --no-systemd)" in built.install_output  # type: ignore[attr-defined]

    def test_installed_config_migrates_into_the_state_directory(self, built: Built, tmp_path: Path):
        config = built.prefix / "etc" / "cliproxy" / "config.yaml"
        result = subprocess.run(
            [str(built.bin / "cliproxy"), "migrate", "--config", str(config)],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert (built.prefix / "var" / "lib" / "cliproxy" / "cliproxy.db").is_file()

    def test_rerun_keeps_the_operators_config(self, built: Built):
        config = built.prefix / "etc" / "cliproxy" / "config.yaml"
        edited = config.read_text().replace("port: 8317", "port: 8444  # edited by the operator")
        assert edited != config.read_text()
        config.write_text(edited)
        again = run_installer(built)
        assert again.returncode == 0, again.stderr
        assert f"keeping the existing {config}" in again.stdout
        assert config.read_text() == edited

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
    def test_systemd_accepts_the_installed_unit(self, built: Built):
        unit = built.prefix / "etc" / "systemd" / "system" / "cliproxy.service"
        result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stderr == "", result.stderr
