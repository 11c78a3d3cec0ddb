"""`cliproxy enable` and `disable`: a pair switched through the running server's management API
(the server records the change; the CLI never writes the database itself)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from cliproxy.cli import confirmations, views
from cliproxy.cli.common import config_path, fail, load_leniently_or_exit
from cliproxy.core.config import Config

__all__ = ["KEY_ENV", "cmd_disable", "cmd_enable", "default_url", "duration_arg"]

#: The management key, unless --key is given.
KEY_ENV = "CLIPROXY_MANAGEMENT_KEY"


def duration_arg(text: str) -> float:
    try:
        return views.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_url(config: Config) -> str:
    """`http://host:port` of the server in `config`; a wildcard listen address means this host."""
    host = config.host.strip()
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it would resend the management key somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    # No proxies from the environment (http_proxy ...): the key goes straight to the server.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _server_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, or the body's first line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:200] if text else ""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return payload["message"]
    return text[:200]


def _management_call(args: argparse.Namespace, action: str) -> int:
    key = args.key or os.environ.get(KEY_ENV)
    if not key:
        # Refuse locally: a keyless call would count towards the server's lock-out of this address.
        return fail(action, f"no management key: pass --key or set {KEY_ENV}", 2)
    every = bool(getattr(args, "all", False))
    if every and (args.vendor or args.model):
        return fail(action, "--all names no pair: use --vendor V to narrow it, not VENDOR MODEL", 2)
    if not every and (not args.vendor or not args.model):
        return fail(action, "name a pair (VENDOR MODEL), or use --all", 2)
    if not every and (getattr(args, "all_vendor", None) or getattr(args, "all_reason", None)):
        return fail(action, "--vendor and --reason go with --all", 2)
    base = (args.url or default_url(load_leniently_or_exit(config_path(args)).config)).rstrip("/")
    path = (
        confirmations.enable_all_path(args.all_vendor, args.all_reason)
        if every
        else confirmations.management_path(action, args.vendor, args.model)
    )
    body: dict[str, Any] = {}
    duration = getattr(args, "duration", None)
    if duration is not None:
        body["duration_seconds"] = int(duration) if float(duration).is_integer() else duration
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "cliproxy-cli",
        },
    )

    def scrub(text: str) -> str:  # belt and braces: never echo the key
        return text.replace(key, "***")

    pair = "enable --all" if every else f"{args.vendor} {args.model}"
    try:
        with _opener().open(request, timeout=args.timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        message = _server_message(exc.read()) or exc.reason
        retry = exc.headers.get("Retry-After") if exc.headers else None
        extra = f" (retry after {retry}s)" if retry else ""
        if exc.code == 404 and not message:
            message = "not found"
        return fail(action, scrub(f"{pair}: server answered {exc.code}: {message}{extra}"))
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return fail(action, f"cliproxy is not running at {base} (connection refused)")
        if isinstance(reason, TimeoutError):
            return fail(action, f"cliproxy at {base} did not answer within {args.timeout:g}s")
        return fail(action, scrub(f"cannot reach cliproxy at {base}: {reason}"))
    except TimeoutError:
        return fail(action, f"cliproxy at {base} did not answer within {args.timeout:g}s")
    except (OSError, http.client.HTTPException) as exc:
        return fail(action, scrub(f"cannot talk to cliproxy at {base}: {exc!r}"))
    try:
        decoded: Any = json.loads(answer)
    except ValueError:
        decoded = None
    if every:
        line = confirmations.enable_all_confirmation(decoded)
    else:
        line = confirmations.confirmation(action, args.vendor, args.model, duration, decoded, time.time())
    print(scrub(f"{line} (via {base})"))
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    return _management_call(args, "enable")


def cmd_disable(args: argparse.Namespace) -> int:
    return _management_call(args, "disable")
