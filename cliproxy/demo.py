"""`cliproxy demo`: a first run on a fresh machine, with nothing to configure.

The gateway runs on a generated config with two demo vendors, `primary` (priority 10) and
`backup`, both serving the model `chat`. Each vendor is an in-process `FakeUpstream` on its own
port, in the same event loop as the gateway: one process, so Ctrl-C or SIGTERM stops everything
and nothing is left behind. Once the gateway answers, the demo prints commands to try in another
shell: a chat request, a stream, a fault injected into `primary` to watch failover and
auto-disable, `cliproxy status` / `cliproxy history`, and recovery.

The config and the database live in `./cliproxy-demo/` (`--dir`), not in a temporary directory:
`cliproxy status` and `cliproxy history` on them keep working after the demo stops, and the
generated config is there to read and copy. Ports are fixed by default, so a second run writes
the same config; a config that differs from what the demo would write (edited by hand or through
the management API) is never overwritten: the demo stops and says so.

Pure parts (`demo_config`, `config_text`, `instructions`, `self_command`) build text; `run_demo`
does the I/O.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cliproxy.fake_upstream import FakeUpstream
from cliproxy.services.config_loader import load_config
from cliproxy.services.store import apply_migrations

__all__ = ["DemoPorts", "config_text", "demo_config", "instructions", "run_demo", "self_command"]

#: Not secrets: the demo listens on 127.0.0.1 only, and these are printed for copying.
CLIENT_KEY = "demo-client-key"
MANAGEMENT_KEY = "demo-management-key"

#: Auto-disable tuned to be watched by hand: 3 failures within a minute disable for 20 s.
FAILURE_THRESHOLD = 3
DISABLE_SECONDS = 20

DEFAULT_DIR = "cliproxy-demo"


@dataclass(frozen=True, slots=True)
class DemoPorts:
    gateway: int = 8399
    primary: int = 9101
    backup: int = 9102


def demo_config(ports: DemoPorts, database: Path) -> dict[str, Any]:
    """The gateway's config: two vendors on the fakes' ports, both serving the alias `chat`."""
    return {
        "host": "127.0.0.1",
        "port": ports.gateway,
        "api-keys": [CLIENT_KEY],
        "database": str(database),
        "shutdown-grace-seconds": 2,  # Ctrl-C should feel instant in a demo
        "remote-management": {"secret-key": MANAGEMENT_KEY},
        "auto-disable": {
            "failure-threshold": FAILURE_THRESHOLD,
            "time-window-seconds": 60,
            "disable-duration-seconds": DISABLE_SECONDS,
        },
        "openai-compatibility": [
            {
                "name": "primary",
                "base-url": f"http://127.0.0.1:{ports.primary}/v1",
                "priority": 10,
                "models": [{"name": "gpt-4o-mini", "alias": "chat"}],
            },
            {
                "name": "backup",
                "base-url": f"http://127.0.0.1:{ports.backup}/v1",
                "models": [{"name": "gpt-4o", "alias": "chat"}],
            },
        ],
    }


def config_text(ports: DemoPorts, database: Path) -> str:
    header = (
        "# Written by `cliproxy demo`: two demo vendors served by the built-in fake upstream.\n"
        "# The demo never overwrites a changed copy; copy it elsewhere to experiment.\n"
    )
    return header + yaml.safe_dump(demo_config(ports, database), sort_keys=False)


def self_command(argv0: str, executable: str, on_path: str | None) -> str:
    """How a new shell runs this same cliproxy: `cliproxy` if that is what PATH finds, else the
    script's own path, else `python -m cliproxy` with this interpreter."""
    if Path(argv0).name == "__main__.py":  # python -m cliproxy
        return f"{shlex.quote(executable)} -m cliproxy"
    script = Path(argv0).resolve()
    if on_path is not None and Path(on_path).resolve() == script:
        return "cliproxy"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(executable)} -m cliproxy"


def instructions(ports: DemoPorts, config_path: Path, database: Path, cliproxy: str) -> str:
    """What to try, as commands that run as written in a new shell."""
    gateway = f"http://127.0.0.1:{ports.gateway}"
    primary = f"http://127.0.0.1:{ports.primary}"
    config = shlex.quote(str(config_path))
    auth = f"-H 'Authorization: Bearer {CLIENT_KEY}' -H 'Content-Type: application/json'"
    ask = '{"model": "chat", "messages": [{"role": "user", "content": "hello"}]}'
    stream = '{"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hello"}]}'
    chat = f"curl -s {gateway}/v1/chat/completions {auth} -d '{ask}'"
    who = f"curl -s -o /dev/null -D - {gateway}/v1/chat/completions {auth} -d '{ask}' | grep -i '^x-cliproxy'"
    return f"""\
cliproxy demo: the gateway listens on {gateway}, with two demo vendors serving the model "chat":
  primary  {primary}/v1  (priority 10: it answers while it works)
  backup   http://127.0.0.1:{ports.backup}/v1
Config {config_path}, database {database}. Ctrl-C stops everything.
The dashboard: {gateway}/ui/ in a browser on this machine, management key {MANAGEMENT_KEY}.

Try these in another shell:

  # 1. A chat request (primary answers):
  {chat}

  # 2. The same, streamed chunk by chunk:
  curl -sN {gateway}/v1/chat/completions {auth} -d '{stream}'

  # 3. Which vendor answered, and after how many attempts:
  {who}

  # 4. Make primary fail: every request to it now gets 503.
  curl -s -X POST {primary}/_fake/faults -d '{{"status": 503}}'

  # 5. Run command 3 again, {FAILURE_THRESHOLD} times: each fails over to backup (x-cliproxy-attempts: 2).
  #    Then primary is auto-disabled for {DISABLE_SECONDS}s and backup answers at once (attempts: 1):
  {cliproxy} status --config {config}
  {cliproxy} history --config {config}
  curl -s -H 'Authorization: Bearer {MANAGEMENT_KEY}' {gateway}/api/models/disabled

  # 6. Recovery: clear the fault; {DISABLE_SECONDS}s after the disable, primary answers again
  #    (command 3 says primary; history shows the enabled event):
  curl -s -X DELETE {primary}/_fake/faults
"""


class DemoError(Exception):
    """The demo cannot start; the message is one line for the operator."""


def prepare(directory: Path, ports: DemoPorts) -> Path:
    """Write the demo's config (unless the same one is there) and migrate its database."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.yaml"
    text = config_text(ports, directory / "demo.db")
    if config_path.exists():
        if config_path.read_text(encoding="utf-8", errors="replace") != text:
            raise DemoError(
                f"{config_path} differs from the demo's config (changed by hand, through the management "
                "API, or written with other ports); move it away or pass --dir to use another directory"
            )
    else:
        tmp = config_path.with_name(config_path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, config_path)  # never a half-written config
    apply_migrations(directory / "demo.db")
    return config_path


async def _serve_with_fakes(config_path: Path, ports: DemoPorts, cliproxy: str) -> int:
    from cliproxy.server import serve

    config = load_config(config_path)
    # Checked first: the readiness probe below connects to the gateway's port, and would take
    # another program listening there for the gateway.
    for port, option in ((ports.gateway, "--port"), (ports.primary, "--primary-port"), (ports.backup, "--backup-port")):
        _require_free(port, option)
    fakes = [FakeUpstream(name="primary", record=False), FakeUpstream(name="backup", record=False)]
    try:
        for fake, port in zip(fakes, (ports.primary, ports.backup)):
            await fake.start("127.0.0.1", port)
        gateway = asyncio.create_task(serve(config))
        if await _answers(ports.gateway, gateway):
            print(instructions(ports, config_path, Path(config.database), cliproxy), flush=True)
        return await gateway
    finally:
        for fake in fakes:
            await fake.stop()


def _require_free(port: int, option: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"127.0.0.1:{port} is in use ({exc.strerror or exc}); pick another with {option}") from None


async def _answers(port: int, server: asyncio.Task[int]) -> bool:
    """True once the gateway accepts connections; False if it exited first (it logged why)."""
    while not server.done():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


def run_demo(directory: Path, ports: DemoPorts) -> int:
    """Run the demo until SIGINT or SIGTERM; the gateway's exit status (0 after a clean stop)."""
    config_path = prepare(directory, ports)
    cliproxy = self_command(sys.argv[0], sys.executable, shutil.which("cliproxy"))
    return asyncio.run(_serve_with_fakes(config_path, ports, cliproxy))
