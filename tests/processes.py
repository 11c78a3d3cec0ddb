"""Real `cliproxy serve` subprocesses for restart, kill -9 and signal tests."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["GatewayProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """`python -m cliproxy.cli serve --config FILE` on a free port; stderr collected to a file."""

    def __init__(
        self, tmp_path: Path, config: dict[str, Any], *, env: dict[str, str] | None = None, nofile: int | None = None
    ) -> None:
        #: RLIMIT_NOFILE (soft and hard) of the process when given: how many descriptors it may hold.
        self.nofile = nofile
        self.port = config.setdefault("port", free_port())
        config.setdefault("host", "127.0.0.1")
        config.setdefault("database", str(tmp_path / "cliproxy.db"))
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = tmp_path / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        log = open(self.log_path, "ab")  # appended across restarts
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cliproxy.cli", "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self.env,
            preexec_fn=self._limit_descriptors if self.nofile is not None else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cliproxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"cliproxy did not listen within {timeout}s:\n{self.log()}")

    def _limit_descriptors(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def open_descriptors(self) -> int:
        """How many file descriptors the process holds now (from /proc)."""
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
