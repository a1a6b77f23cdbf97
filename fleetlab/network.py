"""The lab network: one bridge on the host, one netns and veth pair per node, one private /24.

Only objects whose names derive from the lab name are created; links carry the lab's ifalias,
and deletion functions refuse links that do not carry it.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from ipaddress import IPv4Address, IPv4Network, ip_interface, ip_network
from pathlib import Path
from typing import Iterable

from fleetd.errors import LabError

from .naming import NODE_IFNAME
from .sysutil import run

POOL = IPv4Network("10.213.0.0/16")
NETNS_DIR = Path("/run/netns")


def host_networks() -> list[IPv4Network]:
    """Every IPv4 network the host has a route to or an address in (default routes excluded)."""
    nets: list[IPv4Network] = []
    for route in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        dst = route.get("dst")
        if dst and dst != "default":
            try:
                nets.append(ip_network(dst, strict=False))
            except ValueError:
                pass
    for link in json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for addr in link.get("addr_info", []):
            nets.append(ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    return nets


def choose_subnet(lab: str, used: Iterable[IPv4Network], pool: IPv4Network = POOL) -> IPv4Network:
    """A /24 of `pool` overlapping none of `used`, searched from a point derived from the lab name."""
    used = list(used)
    candidates = list(pool.subnets(new_prefix=24))
    start = zlib.crc32(lab.encode()) % len(candidates)
    for net in candidates[start:] + candidates[:start]:
        if not any(net.overlaps(u) for u in used):
            return net
    raise LabError(f"lab {lab}: no free /24 left in {pool}")


def host_ip(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + 1


def node_ip(subnet: IPv4Network, index: int) -> IPv4Address:
    return subnet.network_address + 10 + index


def ip_batch(commands: list[str], netns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run(cmd, input="\n".join(commands) + "\n")


def link_alias(name: str, netns: str | None = None) -> str | None:
    """The ifalias of link `name`, "" if it has none, None if there is no such link."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-j", "link", "show", "dev", name]
    proc = run(cmd, check=False)
    if proc.returncode != 0:
        return None
    links = json.loads(proc.stdout or "[]")
    return links[0].get("ifalias", "") if links else None


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def require_absent(links: Iterable[str], netns: Iterable[str]) -> None:
    """Refuse to create a link or netns whose name is already taken (it is not ours)."""
    for name in links:
        if link_alias(name) is not None:
            raise LabError(f"interface {name} already exists and was not created by this lab")
    for name in netns:
        if netns_exists(name):
            raise LabError(f"network namespace {name} already exists and was not created by this lab")


def create_bridge(bridge: str, alias: str, address: IPv4Address, subnet: IPv4Network) -> None:
    ip_batch(
        [
            f"link add name {bridge} type bridge forward_delay 0",
            f"link set dev {bridge} alias {alias}",
            f"addr add {address}/{subnet.prefixlen} dev {bridge}",
            f"link set dev {bridge} up",
        ]
    )


def create_node_links(bridge: str, alias: str, nodes: list[tuple[str, str, IPv4Address]], prefixlen: int) -> None:
    """For each (netns, veth, ip): the netns, a veth pair bridged on the host, the address inside."""
    host: list[str] = []
    for netns, veth, _ip in nodes:
        host += [
            f"netns add {netns}",
            f"link add name {veth} type veth peer name {NODE_IFNAME} netns {netns}",
            f"link set dev {veth} alias {alias}",
            f"link set dev {veth} master {bridge}",
            f"link set dev {veth} up",
        ]
    ip_batch(host)
    for netns, _veth, ip in nodes:
        ip_batch(
            [
                "link set dev lo up",
                f"link set dev {NODE_IFNAME} alias {alias}",
                f"addr add {ip}/{prefixlen} dev {NODE_IFNAME}",
                f"link set dev {NODE_IFNAME} up",
            ],
            netns=netns,
        )


def remove_links(alias: str, listed: Iterable[str]) -> list[str]:
    """Delete the host links carrying `alias`, and those in `listed` that carry no alias yet
    (created, crash before the alias was set). Return the names that could not be deleted."""
    listed = set(listed)
    shown = json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")
    candidates = listed | {link["ifname"] for link in shown if link.get("ifalias") == alias}
    failed = []
    for name in sorted(candidates):
        current = link_alias(name)
        if current is None or not (current == alias or (current == "" and name in listed)):
            continue
        run(["ip", "link", "del", "dev", name], check=False)
        if link_alias(name) is not None:
            failed.append(name)
    return failed


def remove_netns(alias: str, listed: Iterable[str], pattern: re.Pattern[str]) -> list[str]:
    """Delete the netns in `listed` or matching `pattern` whose node link carries `alias` (or, if
    listed, has no alias or no link yet). Return the names that could not be deleted."""
    listed = set(listed)
    present = {p.name for p in NETNS_DIR.glob("*")} if NETNS_DIR.is_dir() else set()
    failed = []
    for name in sorted((listed | {n for n in present if pattern.fullmatch(n)}) & present):
        owner = link_alias(NODE_IFNAME, netns=name)
        if owner == alias or (name in listed and owner in (None, "")):
            run(["ip", "netns", "del", name], check=False)
            if netns_exists(name):
                failed.append(name)
    return failed


# --- partitions ---------------------------------------------------------------

_RULES = (("INPUT", "-i"), ("OUTPUT", "-o"))


def _firewalls() -> list[str]:
    return [tool for tool in ("iptables", "ip6tables") if shutil.which(tool)]


def _rule_cmd(tool: str, netns: str, action: str, chain: str, flag: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / netns}", tool, "-w", action, chain, flag, NODE_IFNAME, "-j", "DROP"]


def set_partitioned(netns: str, veth: str, cut: bool) -> None:
    """Cut (or restore) all traffic of a node's interface; the node itself keeps running.

    With iptables: DROP rules on the node's interface inside its netns (packets vanish, like a real
    partition). Without it: the host end of the node's veth goes down (and up again to heal).
    """
    tools = _firewalls()
    if not tools:
        run(["ip", "link", "set", "dev", veth, "down" if cut else "up"])
        return
    for tool in tools:
        for chain, flag in _RULES:
            present = run(_rule_cmd(tool, netns, "-C", chain, flag), check=False).returncode == 0
            if cut and not present:
                run(_rule_cmd(tool, netns, "-I", chain, flag))
            elif not cut and present:
                run(_rule_cmd(tool, netns, "-D", chain, flag))
    if not cut:
        run(["ip", "link", "set", "dev", veth, "up"])
