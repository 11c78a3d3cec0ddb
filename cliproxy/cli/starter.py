"""`cliproxy init`: a starter config for an install that has none.

A wheel carries no `config.yaml` (the annotated reference ships in the source distribution and the
repository), so a user who ran `pip install cliproxy` would otherwise write one from the README.
The starter is small and valid as written: a client key and a management key generated for this
install, the database next to the config, one local vendor (Ollama's OpenAI-compatible API) and a
hosted one commented out. It is never written over an existing file, and it is readable by its
owner only: it holds the keys.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path

from cliproxy.cli.common import config_path, fail

__all__ = ["cmd_init", "starter_config"]

_STARTER = """\
# cliproxy configuration, written by `cliproxy init`. Every key is described in the README's
# "Configuration" section (the source distribution's config.yaml shows them all, with a comment each).
# Check it with: cliproxy check-config --config {path}

host: 127.0.0.1              # where the gateway listens; clients use http://127.0.0.1:8317/v1
port: 8317
database: {database}         # disabled pairs and the audit history (SQLite)

# Client keys: clients send "Authorization: Bearer <key>" (or "x-api-key: <key>").
api-keys:
  - {client_key}

# The management API (/api), the CLI's enable/disable and the dashboard (/ui/) take this key.
remote-management:
  secret-key: {management_key}

# A failing (vendor, model) pair is taken out of rotation for a while, and the change recorded.
auto-disable:
  failure-threshold: 5
  time-window-seconds: 60
  disable-duration-seconds: 300

# The vendors: OpenAI-compatible APIs, tried by priority (higher first), round robin within one.
openai-compatibility:
  - name: local
    base-url: http://127.0.0.1:11434/v1     # Ollama; vLLM serves http://127.0.0.1:8000/v1
    models:
      - name: llama3.2
  # - name: openrouter
  #   base-url: https://openrouter.ai/api/v1
  #   api-key-entries:
  #     - api-key: ${{OPENROUTER_API_KEY}}     # read from the environment when the config loads
  #   models:
  #     - name: deepseek/deepseek-chat
  #       alias: chat                         # what clients ask for
"""


def starter_config(path: Path) -> str:
    """The starter's text for a config at `path`: fresh keys, the database beside it."""
    return _STARTER.format(
        path=path,
        database=json.dumps(str(path.parent / "cliproxy.db")),  # quoted: a path may hold YAML's specials
        client_key=f"sk-cliproxy-{secrets.token_urlsafe(24)}",
        management_key=f"mgmt-{secrets.token_urlsafe(24)}",
    )


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(config_path(args)).absolute()
    if path.exists() or path.is_symlink():
        return fail("init", f"{path} exists; it is left as it is (remove it, or name another file with --config)")
    if not path.parent.is_dir():
        return fail("init", f"no such directory: {path.parent}")
    text = starter_config(path)
    # Written whole to a private temporary file, then linked into place: a crash leaves no
    # half-written config, and link(2) refuses a file that appeared meanwhile.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return fail("init", f"{path} exists; it is left as it is")
    finally:
        os.unlink(temporary)
    print(f"wrote {path} (readable by you only: it holds the client and management keys it generated)")
    print("next:")
    print(f"  cliproxy check-config --config {path}")
    print(f"  cliproxy serve --config {path}")
    return 0
