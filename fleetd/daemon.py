"""fleetd: the per-node daemon. Wires presence, the agent, the engine and the API together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from fleetd import __version__, sdnotify
from fleetd.config import FleetConfig, load_config
from fleetd.errors import ConfigError, FleetError
from fleetd.gc_tuning import settle_fleetd

log = logging.getLogger("fleetd")

# every fleet.conf key can also be given as a flag (--agent-ttl=10s ...)
FLAG_KEYS = (
    "etcd_servers", "etcd_key_prefix", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "etcd_username",
    "etcd_password", "etcd_request_timeout", "public_ip", "metadata", "agent_ttl", "engine_reconcile_interval",
    "disable_engine", "disable_watches", "units_directory", "verbosity", "machine_id_file", "state_directory",
    "api_socket", "api_socket_group", "api_tcp", "api_insecure_tcp", "api_cafile", "api_certfile", "api_keyfile",
    "images_directory", "image_port", "dns_listen", "dns_domain", "dns_upstream", "dns_ttl", "skydns_prefix",
    "check_concurrency",
)


def setup_logging(verbosity: int) -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.DEBUG if verbosity > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aetcd").setLevel(logging.WARNING)


class Daemon:
    def __init__(self, config: FleetConfig):
        self.config = config
        self.tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        from fleetd.agent.loop import Agent
        from fleetd.agent.systemd import SystemdManager
        from fleetd.engine.leader import Engine
        from fleetd.machine import this_machine
        from fleetd.presence import Presence
        from fleetd.registry import Registry

        cfg = self.config
        machine = this_machine(cfg)
        async with contextlib.AsyncExitStack() as stack:
            registry = await Registry.connect(cfg.etcd)
            stack.push_async_callback(registry.close)
            presence = Presence(registry, machine, cfg.agent_ttl, Path(cfg.state_directory))
            from fleetd.api.peer import PeerClient

            presence.peer_client = PeerClient.from_config(cfg)
            if presence.peer_client is not None:
                stack.push_async_callback(presence.peer_client.close)
            await self._retry("registering machine", lambda: presence.register(wait_duplicate=0))
            systemd = await SystemdManager.connect(Path(cfg.units_directory))
            stack.push_async_callback(systemd.close)
            try:
                if await systemd.disarm_fence():
                    log.info("removed the fence timer the previous fleetd left: its units keep running")
            except FleetError as exc:
                log.error("cannot remove the fence timer the previous fleetd left: %s", exc)
            agent = None

            async def leave_fence() -> None:  # at exit, after the agent's task is cancelled
                if agent is not None:
                    await agent.leave_fence()

            stack.push_async_callback(leave_fence)
            containers = await self._containers(registry, machine, stack)
            discovery = await self._discovery(registry, machine, presence, stack)
            agent = Agent(registry, systemd, presence, containers=containers, observer=discovery[0])
            # the leader lease: fleet's 5 x interval, but never longer than a machine's TTL, so
            # that leader failover is no slower than machine failover
            leader_ttl = max(2.0, min(5 * cfg.engine_reconcile_interval, cfg.agent_ttl))
            engine = None if cfg.disable_engine else Engine(
                registry, machine.id, cfg.engine_reconcile_interval, lease_ttl=leader_ttl,
                machine_ttl=cfg.agent_ttl)
            if engine is not None:
                stack.push_async_callback(engine.resign)
                if presence.peer_client is not None:  # a lone lost machine's units may move sooner
                    from fleetd.engine.evidence import LoneLossEvidence

                    engine.evidence = LoneLossEvidence(registry, presence.peer_client.quiet)
            api = await self._start_api(registry, presence, agent, engine, discovery)
            if api is not None:
                stack.push_async_callback(api.stop)
            stack.push_async_callback(self._cancel_tasks)
            self.tasks = [asyncio.create_task(presence.run(), name="presence"),
                          asyncio.create_task(agent.run(), name="agent"),
                          *(asyncio.create_task(part.run(), name="discovery") for part in discovery)]
            if engine is not None:
                self.tasks.append(asyncio.create_task(engine.run(), name="engine"))
            watchdog = sdnotify.watchdog_interval()
            if watchdog:
                self.tasks.append(asyncio.create_task(self._watchdog(watchdog), name="watchdog"))
            sdnotify.notify(f"READY=1\nSTATUS=machine {machine.id[:8]} registered")
            settle_fleetd()  # start-up done: its objects frozen (fleetd/gc_tuning.py)
            log.info("fleetd %s started on machine %s", __version__, machine.id)
            await self._until_stopped()
            sdnotify.notify("STOPPING=1")
            log.info("fleetd stopping; units keep running")

    async def _until_stopped(self) -> None:
        """Return on SIGTERM/SIGINT; raise the error of a component that failed."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stop_waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stop_waiter, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_waiter.cancel()
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _containers(self, registry, machine, stack: contextlib.AsyncExitStack):
        """Container support: the image store, its server on public_ip:image_port (when both
        are set), and the agent's NodeContainers (rendering, image fetching, publication)."""
        from fleetd.container.node import NodeContainers, local_facts
        from fleetd.errors import ImageError
        from fleetd.images.server import ImageServer
        from fleetd.images.store import ImageStore
        from fleetd.registry.images import ImageDirectory

        cfg = self.config
        store = ImageStore(cfg.images_directory)
        facts = local_facts(cfg.images_directory)
        if cfg.dns_listen:  # containers resolve through this fleetd's DNS (see _discovery)
            facts = dataclasses.replace(facts, resolv_conf=str(Path(cfg.state_directory) / "resolv.conf"))
        server = None
        server_ssl = client_ssl = None
        if cfg.api_cafile and cfg.api_certfile and cfg.api_keyfile:
            # the machine's API certificate serves images too, to cluster certificates only
            from fleetd.api.listeners import server_ssl_context
            from fleetd.wire import client_ssl_context

            server_ssl = server_ssl_context(cfg.api_cafile, cfg.api_certfile, cfg.api_keyfile)
            client_ssl = client_ssl_context(cfg.api_cafile, cfg.api_certfile, cfg.api_keyfile)
        if cfg.public_ip and cfg.image_port:
            server = ImageServer(store, cfg.public_ip, cfg.image_port, machine_id=machine.id, facts=facts.to_json(),
                                 ssl_context=server_ssl)
            try:
                await server.start()
                stack.push_async_callback(server.stop)
            except ImageError as exc:
                log.error("%s; other machines cannot fetch images from this one", exc)
                server = None
        return NodeContainers(store, facts, machine.id,
                              directory=ImageDirectory(registry), server_url=server.url if server else "",
                              client_ssl=client_ssl)

    async def _discovery(self, registry, machine, presence, stack: contextlib.AsyncExitStack):
        """Service discovery (fleetd/discovery/): the endpoint publisher the agent feeds, and,
        with dns_listen set, the watch-fed view and the DNS responder that answers from it."""
        from fleetd.discovery.publisher import EndpointPublisher
        from fleetd.registry.services import ServiceRecords

        cfg = self.config
        records = ServiceRecords(registry, domain=cfg.dns_domain, skydns_prefix=cfg.skydns_prefix, ttl=cfg.dns_ttl)
        publisher = EndpointPublisher(records, machine.id, machine.public_ip, lambda: presence.lease_id,
                                      concurrency=max(1, cfg.check_concurrency))
        if not cfg.dns_listen:
            return (publisher,)
        from fleetd.discovery.dns import REFUSE, DnsResponder, parse_address, system_upstreams  # dnslib: by a packet
        from fleetd.discovery.feed import ViewFeed

        feed = ViewFeed(records, cfg.dns_domain)
        host, port = parse_address(cfg.dns_listen, 53)
        if cfg.dns_upstream.strip().lower() == REFUSE:
            upstreams = []
        elif cfg.dns_upstream.strip():
            upstreams = [parse_address(u, 53) for u in cfg.dns_upstream.split(",") if u.strip()]
        else:
            upstreams = [u for u in system_upstreams() if u != (host, port)]
        dns = DnsResponder(lambda: feed.view, upstreams=upstreams, ttl=cfg.dns_ttl)
        try:
            await dns.start(host, port)
        except OSError as exc:
            raise ConfigError(f"dns_listen={cfg.dns_listen}: cannot listen: {exc.strerror or exc}") from None
        stack.push_async_callback(dns.stop)
        write_resolv_conf(Path(cfg.state_directory) / "resolv.conf", host, cfg.dns_domain)
        return (publisher, feed)

    async def _start_api(self, registry, presence, agent, engine, discovery=()):
        from fleetd.api.dashboard import endpoints_provider, set_services_provider
        from fleetd.api.server import ApiServer

        server = ApiServer(self.config, registry, presence, agent, engine)
        # the dashboard's services page: this fleetd's watch-fed view when it serves DNS (no
        # etcd read per page), else one read of the endpoint records per page view
        feed = discovery[1] if len(discovery) > 1 else None
        if feed is not None:
            async def endpoints():
                return feed.view.endpoints
        else:
            endpoints = discovery[0].records.endpoints if discovery else None
        if endpoints is not None:
            set_services_provider(server.context, endpoints_provider(endpoints))
        await server.start()
        return server

    async def _retry(self, what: str, action) -> None:
        """fleet's start-up: retry with exponential backoff from 1 s up to 60 s."""
        from fleetd.errors import DuplicateMachine, RegistryUnavailable

        delay = 1.0
        while True:
            try:
                await action()
                return
            except DuplicateMachine:
                raise
            except RegistryUnavailable as exc:
                log.warning("%s: %s; retrying in %.0fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def write_resolv_conf(path: Path, host: str, domain: str) -> None:
    """The resolv.conf containers rendered on this machine get: this fleetd's DNS."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    text = f"# written by fleetd: its DNS answers <service>.{domain} and forwards the rest\nnameserver {host}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write %s for containers: %s", path, exc)


def build_parser() -> argparse.ArgumentParser:
    """fleetd's command line. argparse, not click: the daemon has a handful of flags, and
    argparse is imported by its libraries anyway, while click would cost ~1 MB of idle RSS."""
    parser = argparse.ArgumentParser(
        prog="fleetd",
        usage="fleetd [-h] [--version] [--config PATH] [--KEY VALUE ...]",
        epilog="Every fleet.conf key is also a flag: --agent-ttl 10s, --etcd-servers URL,... "
               "Exit status: 0 stopped by SIGTERM/SIGINT, 1 bad configuration or a fatal error, "
               "2 bad command line.",
        description="fleetd: the fleet daemon. Runs the agent (and, unless disabled, the engine) on this "
                    "machine. Settings come from the config file, then FLEET_<KEY> environment "
                    "variables, then flags.",
    )
    parser.add_argument("--config", dest="config_path", default="/etc/fleet/fleet.conf", metavar="PATH",
                        help="Path to fleet.conf (top-level key=value lines). Default: %(default)s.")
    parser.add_argument("--version", dest="show_version", action="store_true", help="Print the version and exit.")
    for key in FLAG_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, metavar="VALUE",
                            help=f"fleet.conf key {key}.")
    return parser


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    """The configuration: the file, then FLEET_* variables, then the flags given."""
    overrides = {k: v for k in FLAG_KEYS if (v := getattr(args, k)) is not None}
    if "etcd_password" in overrides:
        print("fleetd: WARNING: --etcd-password is visible to every user in ps; put etcd_password in "
              "fleet.conf (mode 0600) or FLEET_ETCD_PASSWORD instead", file=sys.stderr)
    return load_config(Path(args.config_path), overrides=overrides)


def cli(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.show_version:
        print(f"fleetd version {__version__}")
        return
    try:
        config = config_from_args(args)
    except FleetError as exc:
        print(f"fleetd: {exc}", file=sys.stderr)
        sys.exit(1)
    setup_logging(config.verbosity)
    try:
        asyncio.run(Daemon(config).run())
    except FleetError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
