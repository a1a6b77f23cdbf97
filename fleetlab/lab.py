"""A lab: N nodes (systemd-nspawn on overlay roots) on one bridge, an etcd cluster, fleetd.

    lab = Lab("lab1", nodes=3).up()
    lab.node(1).exec("systemctl is-system-running")
    lab.down()
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from fleetd.errors import LabError
from fleetd.pki import ClusterPKI

from fleetd.config import DEFAULT_SKYDNS_PREFIX

from . import boot, etcd, network
from .bytecode import compile_checkout
from .config import (
    DEFAULT_AGENT_TTL,
    DEFAULT_KEY_PREFIX,
    FLEETD_UNIT,
    LAB_API_PORT,
    NODE_CA,
    NODE_CERT,
    NODE_KEY,
    NODE_TARGET,
    EtcdMember,
    check_agent_ttl,
    check_metadata,
    render_target,
)
from .naming import RUN_DIR, LabNames, check_lab_name
from .node import Node
from .state import LabState, NodeState

if TYPE_CHECKING:
    from . import nodeconfig
from .sysutil import kill_cgroup, mount_at, mounts_under, remove_cgroup, run, wait_until

log = logging.getLogger("fleetlab")

DEFAULT_CHECKOUT = Path(__file__).resolve().parents[1]
REQUIRED_TOOLS = ("systemd-nspawn", "nsenter", "ip", "mount", "umount", "etcd", "etcdctl")
NSPAWN_PROPAGATE = "/run/systemd/nspawn/propagate"
HALT_TIMEOUT = 2.0  # clean halt of all nodes in `down`; then they are crashed (all state is on tmpfs)
# client certificates the lab issues on the host (in <state dir>/pki): etcd's root (used by the
# lab's own etcdctl), an operator (fleetctl, `fleet-lab env`) and a read-only user
LAB_ROOT_CERT = "root"
LAB_OPERATOR_CERT = "admin"
LAB_READER_CERT = "viewer"
INSECURE_WARNING = (
    "lab {name}: --insecure: etcd (client and peer URLs) and the fleet API on TCP speak plaintext "
    "without authentication, and the image server serves every image to anyone: whoever reaches "
    "the lab's bridge {subnet} reads and writes the whole cluster and runs code as root on every node"
)


def host_problem() -> str | None:
    """Why a lab cannot run on this host (not root, a missing tool), or None."""
    if os.geteuid() != 0:
        return "fleet-lab needs root (namespaces, mounts, systemd-nspawn)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"fleet-lab needs {', '.join(missing)} (Debian: systemd-container, etcd-server, etcd-client)"
    if not Path("/lib/systemd/systemd").exists():
        return "fleet-lab needs systemd installed (/lib/systemd/systemd) to boot nodes"
    return None


def list_labs(run_dir: Path = RUN_DIR) -> list[str]:
    """Names of the labs that have a state dir under `run_dir`."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir() and (p / "state.json").exists())


class Lab:
    def __init__(
        self,
        name: str,
        nodes: int = 3,
        agent_ttl: str = DEFAULT_AGENT_TTL,
        fleetd: bool = True,
        metadata: Mapping[int, Mapping[str, str]] | None = None,
        *,
        etcd_key_prefix: str = DEFAULT_KEY_PREFIX,
        checkout: str | Path | None = None,
        run_dir: str | Path = RUN_DIR,
        boot_timeout: float = 60.0,
        insecure: bool = False,
    ) -> None:
        self.names = LabNames(check_lab_name(name), Path(run_dir))
        self.names.check_node_count(nodes)
        self.size = nodes
        self.agent_ttl = check_agent_ttl(agent_ttl)
        self.fleetd = fleetd
        self.metadata = {int(i): check_metadata(m) for i, m in (metadata or {}).items()}
        for index in self.metadata:
            if not 1 <= index <= nodes:
                raise LabError(f"lab {name}: metadata for node {index}, but nodes are 1..{nodes}")
        if not (etcd_key_prefix.startswith("/") and etcd_key_prefix.endswith("/")):
            raise LabError(f"etcd_key_prefix {etcd_key_prefix!r}: must start and end with '/'")
        self.etcd_key_prefix = etcd_key_prefix
        self.checkout = Path(checkout).resolve() if checkout else DEFAULT_CHECKOUT
        self.boot_timeout = boot_timeout
        self.insecure = insecure
        self.state: LabState | None = None

    @classmethod
    def attach(cls, name: str, run_dir: str | Path = RUN_DIR) -> "Lab":
        """The lab `name` as `up` left it (read from its state file)."""
        names = LabNames(check_lab_name(name), Path(run_dir))
        try:
            state = LabState.load(names.state_file)
        except FileNotFoundError:
            raise LabError(f"lab {name}: not found ({names.state_file} does not exist)") from None
        lab = cls(
            name,
            nodes=len(state.nodes) or 1,
            agent_ttl=state.agent_ttl,
            fleetd=state.fleetd,
            etcd_key_prefix=state.etcd_key_prefix,
            checkout=state.checkout,
            run_dir=run_dir,
            insecure=state.insecure,
        )
        lab.metadata = {n.index: dict(n.metadata) for n in state.nodes if n.metadata}
        lab.state = state
        return lab

    def __repr__(self) -> str:
        return f"<Lab {self.name} nodes={self.size} subnet={self.state.subnet if self.state else '-'}>"

    # --- accessors ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.names.lab

    def _state(self) -> LabState:
        if self.state is None:
            raise LabError(f"lab {self.name}: not up")
        return self.state

    @property
    def nodes(self) -> list[Node]:
        return [Node(self, n) for n in self._state().nodes]

    def node(self, ref: int | str) -> Node:
        """Node by number (1-based, as in its name `<LAB>-n1`), by name, or by short name `n1`."""
        for n in self._state().nodes:
            if ref in (n.index, n.name, f"n{n.index}", str(n.index)):
                return Node(self, n)
        raise LabError(f"lab {self.name}: no node {ref!r} (nodes: {', '.join(n.name for n in self._state().nodes)})")

    @property
    def subnet(self) -> IPv4Network:
        return ip_network(self._state().subnet)

    @property
    def etcd_members(self) -> list[EtcdMember]:
        return [EtcdMember(n.name, n.ip, tls=not self.insecure) for n in self._state().nodes if n.etcd_member]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [m.client_url for m in self.etcd_members]

    # --- security (fleetd.pki) -----------------------------------------------------

    @property
    def pki(self) -> ClusterPKI:
        """The lab's cluster PKI on the host (removed with the lab)."""
        return ClusterPKI(self.names.state_dir / "pki")

    def client_files(self, cert: str = LAB_OPERATOR_CERT) -> tuple[str, str, str] | None:
        """(CA, certificate, key) of one of the lab's client certificates; None for --insecure."""
        if self.insecure:
            return None
        out = self.pki.paths(cert)
        return str(out.ca), str(out.cert), str(out.key)

    @property
    def etcd_tls(self) -> etcd.EtcdTLS | None:
        """What the lab's own etcdctl presents: the certificate of etcd's root user."""
        files = self.client_files(LAB_ROOT_CERT)
        return etcd.EtcdTLS(*files) if files else None

    def api_url(self, ref: int | str = 1) -> str:
        """The fleet API of a node on the lab's bridge (https with client certificates by default)."""
        return f"{'http' if self.insecure else 'https'}://{self.node(ref).ip}:{LAB_API_PORT}"

    def api_ssl_context(self, cert: str = LAB_OPERATOR_CERT):
        """An ssl.SSLContext presenting one of the lab's client certificates (None: --insecure)."""
        files = self.client_files(cert)
        if files is None:
            return None
        import ssl

        ctx = ssl.create_default_context(cafile=files[0])
        ctx.check_hostname = False  # nodes are addressed by IP; the CA is the lab's own
        ctx.load_cert_chain(files[1], files[2])
        return ctx

    def fleetctl_api_args(self, ref: int | str = 1, cert: str = LAB_OPERATOR_CERT) -> list[str]:
        """fleetctl's global flags for the API driver on a node's TCP API."""
        args = ["--driver", "api", "--endpoint", self.api_url(ref)]
        files = self.client_files(cert)
        if files:
            args += ["--ca-file", files[0], "--cert-file", files[1], "--key-file", files[2]]
        return args

    def node_etcdctl(self) -> str:
        """The etcdctl command line for use inside a node (its local member, its own certificate:
        etcd user <node name>, read-write below the key prefix only)."""
        if self.insecure:
            return "ETCDCTL_API=3 etcdctl"
        return (f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert={NODE_CA} "
                f"--cert={NODE_CERT} --key={NODE_KEY}")

    def _cluster_spec(self) -> "nodeconfig.ClusterSpec":
        """The lab as fleetlab.nodeconfig sees it (the one node configuration of both labs)."""
        from . import nodeconfig  # late: `python -m fleetlab.nodeconfig` runs it as __main__

        return nodeconfig.ClusterSpec(
            tuple(nodeconfig.NodeSpec(n.name, n.ip, n.etcd_member, n.metadata) for n in self._state().nodes),
            checkout=self.checkout, token=f"fleetlab-{self.name}", tls=not self.insecure,
            agent_ttl=self.agent_ttl, etcd_key_prefix=self.etcd_key_prefix, wanted_by=NODE_TARGET,
            fleetd=self.fleetd, fleetd_template=self._fleetd_template())

    def _issue_certs(self) -> None:
        from . import nodeconfig

        nodeconfig.issue_certs(self.pki, self._cluster_spec(), f"fleet-lab {self.name} CA")

    def _enable_etcd_auth(self) -> None:
        etcd.enable_rbac(self.etcd_endpoints, self.etcd_tls, self.etcd_key_prefix,
                         writers=[n.name for n in self._state().nodes] + [LAB_OPERATOR_CERT],
                         readers=[LAB_READER_CERT],
                         extra_prefixes=[DEFAULT_SKYDNS_PREFIX])  # fleetd writes SkyDNS's keys there

    @property
    def tolerated_units(self) -> frozenset[str]:
        """Units that may fail or hang without failing a boot: fleetd, developed apart from the lab."""
        return frozenset({FLEETD_UNIT}) if self.fleetd else frozenset()

    def save(self) -> None:
        self._state().save(self.names.state_file)

    # --- up ------------------------------------------------------------------------

    def up(self, wait_fleetd: bool = False, fleetd_timeout: float = 60.0) -> "Lab":
        """Boot the lab; on any failure (or signal/exit) everything created is removed again."""
        problem = host_problem()
        if problem:
            raise LabError(problem)
        claimed = False
        try:
            with self._lock():
                if self.names.state_dir.exists():
                    raise LabError(
                        f"lab {self.name}: already exists ({self.names.state_dir}); "
                        f"run `fleet-lab down --name {self.name}`"
                    )
                self.names.state_dir.mkdir(parents=True)
                claimed = True  # from here on, whatever exists of this lab is ours to remove
                atexit.register(self._rollback)
                if self.fleetd:
                    compile_checkout(self.checkout)  # the nodes' fleetd cannot write its .pyc files
                self._build()
            self.wait_etcd_healthy()
            if self.insecure:
                log.warning(INSECURE_WARNING.format(name=self.name, subnet=self.subnet))
            else:
                self._enable_etcd_auth()
            if wait_fleetd:
                self.wait_fleetd(fleetd_timeout)
        except BaseException:
            if claimed:
                self._rollback()
            raise
        finally:
            atexit.unregister(self._rollback)
        return self

    def _rollback(self) -> None:
        try:
            self.down()
        except Exception as exc:  # already failing: report and keep the original error
            log.error("lab %s: rollback failed: %s", self.name, exc)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.names.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.names.lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _subnet_lock(self) -> Iterator[None]:
        """Held from choosing a subnet until its bridge has an address (and so a host route)."""
        fd = os.open(self.names.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _reserved_subnets(self) -> list[IPv4Network]:
        nets = []
        for other in list_labs(self.names.run_dir):
            try:
                nets.append(ip_network(json.loads((self.names.run_dir / other / "state.json").read_text())["subnet"]))
            except (OSError, ValueError, KeyError):
                continue
        return nets

    def _plan(self, subnet: IPv4Network) -> LabState:
        nodes = []
        members = etcd.member_count(self.size)
        for i in range(1, self.size + 1):
            name = self.names.node(i)
            ndir = self.names.node_dir(name)
            meta = {"hostname": name, **self.metadata.get(i, {})}
            nodes.append(
                NodeState(
                    name=name,
                    index=i,
                    ip=str(network.node_ip(subnet, i)),
                    machine_id=secrets.token_hex(16),
                    netns=name,
                    veth=name,
                    root=str(ndir / "root"),
                    upper=str(ndir / "upper"),
                    work=str(ndir / "work"),
                    etcd_member=i <= members,
                    metadata=meta,
                )
            )
        return LabState(
            name=self.name,
            subnet=str(subnet),
            bridge=self.names.bridge,
            host_ip=str(network.host_ip(subnet)),
            checkout=str(self.checkout),
            etcd_key_prefix=self.etcd_key_prefix,
            agent_ttl=self.agent_ttl,
            fleetd=self.fleetd,
            tmpfs=str(self.names.tmpfs_dir),
            insecure=self.insecure,
            nodes=nodes,
        )

    def _build(self) -> None:
        names = self.names
        with self._subnet_lock():
            network.require_absent([names.bridge] + [names.node(i) for i in range(1, self.size + 1)],
                                   [names.node(i) for i in range(1, self.size + 1)])
            subnet = network.choose_subnet(self.name, network.host_networks() + self._reserved_subnets())
            self.state = self._plan(subnet)
            self.save()
            network.create_bridge(names.bridge, names.link_alias, network.host_ip(subnet), subnet)
        state = self._state()
        if not self.insecure:
            self._issue_certs()
        boot.mount_tmpfs(names)
        for node in state.nodes:
            boot.mount_overlay(node)
            self._write_node_files(node)
        network.create_node_links(
            names.bridge, names.link_alias, [(n.netns, n.veth, n.ip) for n in state.nodes], subnet.prefixlen
        )
        nodes = self.nodes
        for node in nodes:  # boot in parallel: spawn all, then wait for all
            node.spawn()
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(lambda n: n.wait_running(), nodes))

    def _fleetd_template(self) -> str | None:
        path = self.checkout / "units" / FLEETD_UNIT
        return path.read_text() if path.is_file() else None

    def _write_node_files(self, node: NodeState) -> None:
        root = Path(node.root)
        unit_dir = "/etc/systemd/system"
        files = {
            "/etc/hostname": node.name + "\n",
            "/etc/machine-id": node.machine_id + "\n",
            f"{unit_dir}/{NODE_TARGET}": render_target(),
        }
        links = {f"{unit_dir}/default.target": NODE_TARGET}
        from . import nodeconfig

        cluster = self._cluster_spec()
        out = nodeconfig.node_files(cluster, cluster.node(node.name), None if self.insecure else self.pki)
        boot.write_files(root, {**files, **out.files}, {**links, **out.links})
        nodeconfig.write_node_files(root, nodeconfig.NodeFiles({}, {}, out.secrets))

    # --- waiting -------------------------------------------------------------------

    def etcd_health(self) -> dict[str, bool]:
        return etcd.endpoint_health(self.etcd_endpoints, self.etcd_tls)

    def wait_etcd_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every etcd member answers `endpoint health` as healthy."""
        health: dict[str, bool] = {}

        def healthy() -> bool:
            health.update(self.etcd_health())
            return all(health.values())

        if not wait_until(healthy, timeout, interval=0.2):
            bad = [ep for ep, ok in health.items() if not ok]
            raise LabError(f"lab {self.name}: etcd not healthy after {timeout:g}s: {', '.join(bad)}")

    def wait_fleetd(self, timeout: float = 60.0) -> None:
        """Wait until fleetd.service is active in every node. fleetd is a Type=notify service
        (units/fleetd.service) that sends READY=1 only once its machine is registered and its API
        server listens (fleetd/daemon.py), so systemd's `active` means both: a first API request
        is not refused."""
        states: dict[str, str] = {}

        def active() -> bool:
            for node in self.nodes:
                states[node.name] = self._fleetd_state(node)
            return all(state == "active" for state in states.values())

        if not wait_until(active, timeout, interval=0.2):
            waiting = ", ".join(f"{name} {state}" for name, state in sorted(states.items()) if state != "active")
            raise LabError(f"lab {self.name}: {FLEETD_UNIT} not active after {timeout:g}s: {waiting}")

    @staticmethod
    def _fleetd_state(node: Node) -> str:
        """`systemctl is-active fleetd.service` in the node (activating until fleetd's READY=1)."""
        try:
            proc = node.exec(["systemctl", "is-active", FLEETD_UNIT], check=False, timeout=10)
        except LabError as exc:  # the node is down, or its systemd did not answer
            return f"({exc})"
        return proc.stdout.strip() or "unknown"

    # --- fleetctl ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment that points fleetctl (and etcdctl) at this lab."""
        endpoints = ",".join(self.etcd_endpoints)
        env = {
            "FLEETCTL_ENDPOINT": endpoints,
            "FLEETCTL_DRIVER": "etcd",
            "FLEETCTL_ETCD_KEY_PREFIX": self.etcd_key_prefix,
            "ETCDCTL_API": "3",
            "ETCDCTL_ENDPOINTS": endpoints,
        }
        files = self.client_files(LAB_OPERATOR_CERT)
        if files:  # the operator certificate: etcd user "admin" (fleet role), API role operator
            ca, cert, key = files
            env.update({"FLEETCTL_CA_FILE": ca, "FLEETCTL_CERT_FILE": cert, "FLEETCTL_KEY_FILE": key,
                        "ETCDCTL_CACERT": ca, "ETCDCTL_CERT": cert, "ETCDCTL_KEY": key})
        return env

    def user_env(self) -> dict[str, str]:
        """What `fleet-lab env` exports for a user's shell: fleetctl on the API driver of node 1's
        TCP API (so `status` and `journal` are relayed by fleetd, no ssh), etcdctl on etcd, both
        with the operator certificate. (`env()` keeps the etcd driver for the lab's own calls.)"""
        env = self.env()
        env.update({"FLEETCTL_DRIVER": "api", "FLEETCTL_ENDPOINT": self.api_url(1)})
        return env

    def fleetctl_command(self) -> list[str]:
        exe = self.checkout / ".venv" / "bin" / "fleetctl"
        if exe.exists():
            return [str(exe)]
        return [str(self.checkout / ".venv" / "bin" / "python"), "-m", "fleetctl"]

    def fleetctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the checkout's fleetctl against this lab (output captured)."""
        return run([*self.fleetctl_command(), *args], env={**os.environ, **self.env()}, check=check, timeout=timeout)

    # --- status --------------------------------------------------------------------

    def status(self) -> dict:
        state = self._state()
        health = self.etcd_health()
        nodes = []
        for node in self.nodes:
            nodes.append(
                {
                    "name": node.name,
                    "ip": node.ip,
                    "machine_id": node.machine_id,
                    "init_pid": node.init_pid,
                    "nspawn_pid": node.state.nspawn.pid if node.state.nspawn and node.state.nspawn.alive() else None,
                    "state": node.system_state(),
                    "partitioned": node.state.partitioned,
                    "etcd": health.get(EtcdMember(node.name, node.ip, tls=not self.insecure).client_url)
                    if node.state.etcd_member else None,
                }
            )
        return {"name": self.name, "subnet": state.subnet, "bridge": state.bridge, "host_ip": state.host_ip,
                "etcd_endpoints": self.etcd_endpoints, "etcd_healthy": bool(health) and all(health.values()),
                "dashboard": self.dashboard_url(), "nodes": nodes}

    def dashboard_url(self, ref: int | str = 1) -> str | None:
        """The web dashboard of a node's fleetd (its TCP API listener); None without fleetd."""
        if not self._state().fleetd:
            return None
        return self.api_url(ref) + "/"  # https with client certificates unless --insecure

    # --- down ----------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything of this lab (idempotent); return warnings about what could not be removed."""
        names = self.names
        with self._lock():
            state = self.state
            if state is None and names.state_file.exists():
                try:
                    state = LabState.load(names.state_file)
                except LabError as exc:
                    log.warning("%s", exc)
            warnings = self._teardown(state)
        if not warnings:
            with contextlib.suppress(OSError):
                names.lock_file.unlink()
        self.state = None
        return warnings

    def _teardown(self, state: LabState | None) -> list[str]:
        names = self.names
        warnings: list[str] = []
        node_states = state.nodes if state else []
        # 1. nodes: clean halt in parallel, then hard kill of whatever is left
        for n in node_states:
            if n.nspawn is not None:
                n.nspawn.signal(signal.SIGTERM)
        wait_until(lambda: not any(n.nspawn.alive() for n in node_states if n.nspawn), HALT_TIMEOUT)
        for n in node_states:
            try:
                boot.crash(names, n)
            except LabError as exc:
                warnings.append(str(exc))
        lab_cgroups = boot.lab_cgroups(names)
        for cg in lab_cgroups:
            kill_cgroup(cg)
        # 2. mounts below the lab dir (overlay roots, then the tmpfs), innermost first
        for mount in reversed(mounts_under(names.state_dir)):
            if not self._umount(mount.mount_point):
                warnings.append(f"could not unmount {mount.mount_point}")
        # 3. links and netns: those named in the state, or carrying the lab's ifalias
        listed_links = [n.veth for n in node_states] + ([state.bridge] if state else [])
        for link in network.remove_links(names.link_alias, listed_links):
            warnings.append(f"could not delete interface {link}")
        own_netns = re.compile(rf"{re.escape(self.name)}-n\d+")
        for ns in network.remove_netns(names.link_alias, [n.netns for n in node_states], own_netns):
            warnings.append(f"could not delete network namespace {ns}")
        # 4. cgroups, nspawn's runtime dirs on the host, then the state dir
        for cg in lab_cgroups:
            if not remove_cgroup(cg):
                warnings.append(f"could not remove cgroup {cg}")
        # nspawn leaves propagate/<machine> behind when /run is not a tmpfs
        leftovers = [Path(NSPAWN_PROPAGATE, n.name) for n in node_states] + [names.state_dir]
        for path in leftovers:
            if not path.exists():
                continue
            if mounts_under(path):
                warnings.append(f"kept {path}: mounts remain below it")
            else:
                _remove_tree_on_one_device(path)
        return warnings

    @staticmethod
    def _umount(path: str, timeout: float = 5.0) -> bool:
        def gone() -> bool:
            if mount_at(path) is None:
                return True
            run(["umount", path], check=False)
            return mount_at(path) is None

        if wait_until(gone, timeout, interval=0.2):
            return True
        log.warning("%s busy after %gs; detaching it lazily", path, timeout)
        run(["umount", "--lazy", path], check=False)
        return mount_at(path) is None


def _remove_tree_on_one_device(path: Path) -> None:
    """rm -r `path`, refusing to descend into anything on another filesystem."""
    dev = path.lstat().st_dev
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + dirnames:
            entry = Path(dirpath, name)
            st = entry.lstat()
            if st.st_dev != dev:
                raise LabError(f"{entry}: on another filesystem; not removing {path}")
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    path.rmdir()
