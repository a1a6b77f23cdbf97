"""fleetd's HTTP API server: fleet's API v1 (wire-compatible) plus /metrics and a few extensions.

Listeners: systemd socket activation (LISTEN_FDS, see units/fleetd.socket) or the unix socket
`api_socket` (mode 0660, group `api_socket_group`), plus TCP `api_tcp=host:port` only with TLS
client certificates (api_cafile + api_certfile + api_keyfile) or, for labs, api_insecure_tcp=true.

Authorization (fleetd.api.auth): read-only clients GET, operators do everything; the role comes
from the client certificate's O, or the unix socket peer's uid/groups; others get 403.

Routes (also under /v1-alpha): /fleet/v1/units[/<name>[/status|/journal]], /fleet/v1/state[/<name>],
/fleet/v1/machines, /fleet/v1/discovery, /fleet/v1/openapi.json (fleetd.api.openapi); /metrics; /peer/v1/etcd
(fleetd/api/peer.py); the web dashboard at `/` and /dashboard/... (fleetd/api/dashboard.py; other methods than GET
on `/` answer 405); anything else 404. Every
response carries `Server: fleetd/<version>`; errors use fleet's {"error":{"code","message"}}.
While etcd cannot be reached, requests that need it get 503 "fleet server unable to communicate
with etcd" and the API recovers by itself when etcd is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from fleetd import __version__
from fleetd.api import dashboard, remote, resources, watch
from fleetd.api import services as services_api
from fleetd.api.auth import IDENTITY, forbidden_message, identify, role_allows
from fleetd.api.context import CONTEXT, ETCD_UNAVAILABLE, ApiContext, HttpError, ctx_of
from fleetd.api.discovery import discovery_document
from fleetd.api.listeners import Listener, server_ssl_context, systemd_listeners, tcp_listener, unix_listener
from fleetd.api.peer import PEER_PATH, QUIET_PATH, peer_handler, quiet_handler
from fleetd.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ApiMetrics
from fleetd.wire import error_body
from fleetd.config import FleetConfig
from fleetd.errors import ConfigError, FleetError, RegistryUnavailable, UnitConflict, UnitError, UnitNotFound

log = logging.getLogger(__name__)

SERVER_HEADER = f"fleetd/{__version__}"
PREFIXES = ("/fleet/v1", "/v1-alpha")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(code: int, message: str) -> web.Response:
    return web.Response(status=code, body=error_body(code, message), content_type="application/json")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        identity = identify(request.transport, ctx_of(request).config)
        request[IDENTITY] = identity
        if not role_allows(identity.role, request.method):
            # before routing, body or unit: a refused client learns nothing else (fleetd.api.auth)
            status = 403
            log.info("API %s %s refused: %s has role %s", request.method, request.path, identity.name, identity.role)
            return error_response(403, forbidden_message(identity, request.method))
        response = await handler(request)
        status = response.status
        return response
    except HttpError as exc:
        status = exc.code
        return error_response(exc.code, exc.message)
    except RegistryUnavailable as exc:
        log.warning("API %s %s: %s", request.method, request.path, exc)
        status = 503
        return error_response(503, ETCD_UNAVAILABLE)
    except UnitNotFound as exc:
        status = 404
        return error_response(404, str(exc))
    except UnitConflict as exc:
        status = 409
        return error_response(409, str(exc))
    except UnitError as exc:
        status = 400
        return error_response(400, str(exc))
    except FleetError as exc:
        log.error("API %s %s: %s", request.method, request.path, exc)
        return error_response(500, str(exc))
    except web.HTTPException as exc:
        status = exc.status
        if exc.status == 404:
            return error_response(404, f"no such resource: {request.path}")
        if exc.status == 405:
            return error_response(405, f"method {request.method} not allowed on {request.path}")
        if exc.status >= 400:
            return error_response(exc.status, exc.reason)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        return error_response(500, "internal error (see fleetd's log)")
    finally:
        metrics = ctx_of(request).metrics
        if metrics is not None and not watch.is_long_poll(request):  # held on purpose: no slow request
            metrics.observe_request(request.method, status, time.perf_counter() - started)
        log.debug("HTTP %s %s -> %s", request.method, request.path_qs, status)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


async def method_not_allowed(request: web.Request) -> web.Response:
    raise HttpError(405, "")


async def discovery(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(400, "only HTTP GET supported against this resource")
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    via_unix = isinstance(sockname, (str, bytes))  # TCP socket names are (host, port) tuples
    root = None if via_unix else f"{request.scheme}://{request.host}"
    return resources.json_response(discovery_document(root))


async def openapi_handler(request: web.Request) -> web.Response:
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    from fleetd.api.openapi import openapi_document

    return web.json_response(openapi_document())


async def metrics_handler(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    if request.method != "GET":
        raise HttpError(405, "only GET supported against this resource")
    if ctx.metrics is None:
        raise HttpError(404, "metrics are disabled")
    await ctx.metrics.refresh_cluster(ctx.registry, timeout=max(1.0, ctx.registry.settings.request_timeout * 2))
    response = web.Response(body=ctx.metrics.render())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=16 * 1024 * 1024)
    app[CONTEXT] = ctx
    app.on_response_prepare.append(_server_header)
    app.on_cleanup.append(watch.close_feed_hub)  # the change feed's shared watch (fleetd/api/feed.py)
    router = app.router
    for prefix in PREFIXES:
        router.add_route("*", prefix, method_not_allowed)
        router.add_route("*", f"{prefix}/units", resources.units_collection)
        router.add_route("*", f"{prefix}/units/{{name}}", resources.unit_item)
        router.add_route("*", f"{prefix}/units/{{name}}/status", remote.unit_status)
        router.add_route("*", f"{prefix}/units/{{name}}/journal", remote.unit_journal)
        router.add_route("*", f"{prefix}/state", resources.state_collection)
        router.add_route("*", f"{prefix}/state/{{name}}", resources.state_item)
        router.add_route("*", f"{prefix}/machines", resources.machines_collection)
        router.add_route("*", f"{prefix}/_watch/units", watch.watch_units)  # beyond fleet
        router.add_route("*", f"{prefix}/discovery", discovery)
        router.add_route("*", f"{prefix}/discovery.json", discovery)
        services_api.register(router, prefix)  # service discovery reads (fleetd/api/services.py)
        router.add_route("*", f"{prefix}/openapi.json", openapi_handler)
    router.add_route("*", "/metrics", metrics_handler)
    router.add_route("*", PEER_PATH, peer_handler)  # fleetds asking each other (fleetd/api/peer.py)
    router.add_route("*", QUIET_PATH, quiet_handler)  # the engine asking them (fleetd/engine/hold.py)
    dashboard.setup(app)  # `/` and /dashboard/...: the web dashboard (GET; other methods 405)
    return app


def tcp_tls_required(config: FleetConfig) -> bool:
    """True if TCP is allowed only with TLS; raise ConfigError if TCP is asked for without it."""
    has_tls = bool(config.api_cafile and config.api_certfile and config.api_keyfile)
    partial = any((config.api_cafile, config.api_certfile, config.api_keyfile)) and not has_tls
    if partial:
        raise ConfigError("api_cafile, api_certfile and api_keyfile must be given together (TLS with client certificates)")
    if has_tls:
        return True
    if config.api_insecure_tcp:
        return False
    raise ConfigError(
        f"api_tcp={config.api_tcp}: refusing to serve the fleet API on TCP without TLS client certificates; "
        "set api_cafile, api_certfile and api_keyfile (or api_insecure_tcp=true, for labs only)"
    )


class ApiServer:
    """`ApiServer(config, registry, presence, agent, engine)`; `await start()`, `await stop()`."""

    def __init__(self, config: FleetConfig, registry: Any, presence: Any = None, agent: Any = None,
                 engine: Any = None, *, metrics: bool = True, use_socket_activation: bool = True):
        machine = getattr(presence, "machine", None)
        self.config = config
        self.registry = registry
        self.presence = presence
        self.metrics = ApiMetrics(engine, agent) if metrics else None
        self.context = ApiContext(
            registry=registry, config=config, machine_id=getattr(machine, "id", "") or "",
            token_limit=config.token_limit, metrics=self.metrics,
        )
        if presence is not None:
            self.context.extras["presence"] = presence
        self.listeners: list[Listener] = []
        self._use_activation = use_socket_activation
        self._runner: web.AppRunner | None = None

    @property
    def unix_paths(self) -> list[str]:
        return [lst.address for lst in self.listeners if lst.kind == "unix"]

    @property
    def tcp_addresses(self) -> list[str]:
        return [lst.address for lst in self.listeners if lst.kind == "tcp"]

    def _open_listeners(self) -> list[tuple[Listener, Any]]:
        cfg = self.config
        tls = None
        opened: list[tuple[Listener, Any]] = []
        try:
            activated = systemd_listeners() if self._use_activation else []
            tcp_wanted = bool(cfg.api_tcp) or any(lst.kind == "tcp" for lst in activated)
            if tcp_wanted and tcp_tls_required(cfg):
                tls = server_ssl_context(cfg.api_cafile, cfg.api_certfile, cfg.api_keyfile)
            for lst in activated:
                opened.append((lst, tls if lst.kind == "tcp" else None))
            if not any(lst.kind == "unix" for lst in activated) and cfg.api_socket:
                opened.append((unix_listener(cfg.api_socket, 0o660, cfg.api_socket_group), None))
            if cfg.api_tcp:
                opened.append((tcp_listener(cfg.api_tcp), tls))
        except Exception:
            for lst, _ in opened:
                self._close(lst)
            raise
        return opened

    async def start(self) -> None:
        opened = self._open_listeners()
        self.listeners = [lst for lst, _ in opened]
        if self.metrics is not None:
            self.registry.set_call_observer(self.metrics.observe_etcd)
        self._runner = web.AppRunner(build_app(self.context), access_log=None, handler_cancellation=True,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        for lst, ssl_ctx in opened:
            site = web.SockSite(self._runner, lst.sock, ssl_context=ssl_ctx)
            await site.start()
            log.info("fleet API listening on %s%s", lst.address,
                     " (TLS, client certificates required)" if ssl_ctx else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.metrics is not None:
            try:
                self.registry.set_call_observer(None)
            except Exception:  # pragma: no cover - registry already closed
                pass
        for lst in self.listeners:
            self._close(lst)
        self.listeners = []

    @staticmethod
    def _close(lst: Listener) -> None:
        try:
            lst.sock.close()
        except OSError:
            pass
        if lst.owned_path is not None:
            try:
                lst.owned_path.unlink()
            except OSError:
                pass

    async def __aenter__(self) -> "ApiServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
