"""Handlers of `/api/config` and `/api/config.yaml`: the running config (masked), the file as it is, and replacing it.

`GET /api/config.yaml` returns the file as it is on disk, which holds `${VAR}` placeholders rather
than their values (a key written literally into the file by the operator is shown as written).
"""

from __future__ import annotations

from aiohttp import web

from cliproxy.core.config import Config
from cliproxy.core.errors import InvalidRequest
from cliproxy.web.admin.config_view import config_view
from cliproxy.web.admin.exchange import committed, json_reply
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import ConfigResponseSchema
from cliproxy.web.admin.views import iso
from cliproxy.web.keys import ADMIN_ACTOR, CONFIG_MANAGER, RUNTIME

__all__ = ["get_config", "get_config_yaml", "put_config_yaml"]


@endpoint(
    "GET", "/api/config", summary="The running configuration, secrets masked", response=ConfigResponseSchema, tags=("config",)
)
async def get_config(request: web.Request) -> web.Response:
    """The running config as JSON (keys as in config.yaml, `${VAR}` expanded, every key masked), the file it
    came from, and the errors of the last rejected reload until a good file loads."""
    return _config_response(request)


@endpoint(
    "GET",
    "/api/config.yaml",
    summary="The config file as it is",
    response=None,
    response_content="application/yaml",
    errors=(503,),
    tags=("config",),
)
async def get_config_yaml(request: web.Request) -> web.Response:
    """The file byte for byte: `${VAR}` placeholders, not their values. A key the operator wrote literally
    into the file is returned as written."""
    return web.Response(text=request.config_dict[CONFIG_MANAGER].read_text(), content_type="application/yaml")


@endpoint(
    "PUT",
    "/api/config.yaml",
    summary="Replace the config file",
    response=ConfigResponseSchema,
    body=None,
    body_content="application/yaml",
    errors=(400, 409, 503),
    tags=("config",),
)
async def put_config_yaml(request: web.Request) -> web.Response:
    """Validated first: an invalid file gives 400 listing every problem and nothing is written. Otherwise
    written atomically and loaded at once; answers like `GET /api/config` once its audit event is
    committed (503 when the database does not take it: the new file is in force meanwhile)."""
    manager = request.config_dict[CONFIG_MANAGER]
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body must be UTF-8 text") from None
    await manager.replace_text(text, actor=request[ADMIN_ACTOR], check=_keeps_management_on)
    await committed(request, after_change=True)  # 200 only once its config-reloaded event is in SQLite
    return _config_response(request)


def _keeps_management_on(config: Config) -> None:
    """A PUT cannot switch the management API off: that one call would lock the operator out."""
    if not config.remote_management.secret_key:
        raise InvalidRequest(
            "the new file has no remote-management.secret-key, which would switch the management API off; "
            "to do that, edit the file on the host",
            param="remote-management.secret-key",
            code="would_disable_management",
        )


def _config_response(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME].current
    manager = request.config_dict[CONFIG_MANAGER]
    data = {
        "path": manager.path,
        "loaded_at": iso(manager.last_loaded_at),
        "last_reload_error": list(manager.last_error) if manager.last_error else None,
        "restart_required": manager.restart_required,
        "config": config_view(runtime.config),
    }
    return json_reply(ConfigResponseSchema, data)
