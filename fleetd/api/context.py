"""What every API handler needs: the registry, this machine, the settings; plus the HTTP error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetd.config import FleetConfig
from fleetd.registry import Registry

ETCD_UNAVAILABLE = "fleet server unable to communicate with etcd"


class HttpError(Exception):
    """Answer the request with fleet's error envelope {"error":{"code","message"}}."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ApiContext:
    registry: Registry
    config: FleetConfig
    machine_id: str = ""  # this fleetd's machine; "" if unknown (then nothing runs locally)
    token_limit: int = 100
    metrics: Any = None  # fleetd.api.metrics.ApiMetrics
    extras: dict[str, Any] = field(default_factory=dict)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("fleet_api_context", ApiContext)


def ctx_of(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
