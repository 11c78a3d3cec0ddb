"""The systemd notify protocol: one datagram of `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET`.

Written out rather than taken from a library because it is a handful of lines: systemd (with
`Type=notify`) waits for `READY=1` before it calls the unit started, and shows `STATUS=` text in
`systemctl status`. A name starting with `@` is a Linux abstract socket (leading NUL byte).
Without `$NOTIFY_SOCKET` (not run by systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `message` (for example `"READY=1\\nSTATUS=listening"`); False when there is nobody to tell.

    Never raises: a supervisor that went away must not take the service down with it.
    """
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not address or address[0] not in "@/":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
