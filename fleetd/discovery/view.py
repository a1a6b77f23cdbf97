"""A pure view of service endpoints, built from a snapshot of the records in etcd.

`ServiceView.build(endpoints)` indexes the records once; `resolve(view, name, qtype)` answers a
DNS question from it without any I/O:

* ``<service>.<domain>``            A: the addresses of the service's healthy endpoints;
                                    SRV: their ports (as for the name below)
* ``_<service>._<proto>.<domain>``  SRV (RFC 2782): priority, weight, port, target
                                    ``<unit label>.<service>.<domain>``; the targets' A records
                                    go in the additional section
* ``<unit label>.<service>.<domain>``  A (and SRV) of that one endpoint

Names inside the domain that match nothing are NXDOMAIN; a known name without records of the
asked type is NODATA (an empty answer); names outside the domain are `FOREIGN` (the responder
forwards or refuses them).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from fleetd.registry.services import Endpoint

ANSWER = "answer"
NXDOMAIN = "nxdomain"
FOREIGN = "foreign"


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, without the final dot, lower case
    rtype: str  # "A" | "AAAA" | "SRV"
    # A/AAAA: the address; SRV: (priority, weight, port, target)
    data: str | tuple[int, int, int, str]


@dataclass(frozen=True)
class Resolution:
    kind: str  # ANSWER (possibly empty: NODATA), NXDOMAIN or FOREIGN
    answers: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()


@dataclass(frozen=True)
class ServiceSummary:
    service: str
    healthy: int
    total: int


def _sort_key(ep: Endpoint) -> tuple:
    return (ep.service, ep.label, ep.unit, ep.machine_id, ep.host, ep.port, ep.protocol, ep.health, ep.tags)


@dataclass
class ServiceView:
    domain: str = "fleet.local"
    # every endpoint, healthy or not, sorted; and the healthy ones per service
    endpoints: tuple[Endpoint, ...] = ()
    healthy: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    by_label: dict[tuple[str, str], tuple[Endpoint, ...]] = field(default_factory=dict)
    known_services: frozenset[str] = frozenset()

    @classmethod
    def build(cls, endpoints: Iterable[Endpoint], domain: str = "fleet.local") -> "ServiceView":
        all_eps = tuple(sorted(endpoints, key=_sort_key))
        healthy: dict[str, list[Endpoint]] = {}
        by_label: dict[tuple[str, str], list[Endpoint]] = {}
        for ep in all_eps:
            if ep.healthy:
                healthy.setdefault(ep.service, []).append(ep)
                by_label.setdefault((ep.label, ep.service), []).append(ep)
        return cls(domain=normalize(domain), endpoints=all_eps,
                   healthy={k: tuple(v) for k, v in healthy.items()},
                   by_label={k: tuple(v) for k, v in by_label.items()},
                   known_services=frozenset(ep.service for ep in all_eps))

    def services(self) -> list[ServiceSummary]:
        totals: dict[str, list[int]] = {}
        for ep in self.endpoints:
            row = totals.setdefault(ep.service, [0, 0])
            row[1] += 1
            row[0] += ep.healthy
        return [ServiceSummary(name, h, t) for name, (h, t) in sorted(totals.items())]

    def of(self, service: str | None = None) -> list[Endpoint]:
        return [ep for ep in self.endpoints if service is None or ep.service == service]


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


@functools.lru_cache(maxsize=65536)
def _address(host: str) -> tuple[str, str] | None:
    """("A"|"AAAA", canonical address) of a host, None for a name (memoized: hosts repeat)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ("A" if ip.version == 4 else "AAAA", str(ip))


def _address_record(name: str, ep: Endpoint) -> Record | None:
    found = _address(ep.host)
    return None if found is None else Record(name, found[0], found[1])


def _srv(name: str, ep: Endpoint, domain: str) -> Record:
    return Record(name, "SRV", (ep.priority, ep.weight, ep.port, f"{ep.label}.{ep.service}.{domain}"))


def resolve(view: ServiceView, qname: str, qtype: str) -> Resolution:
    """The answer to one question (qtype: "A", "AAAA", "SRV", "ANY", ...), from the view only."""
    name = normalize(qname)
    domain = view.domain
    if name != domain and not name.endswith("." + domain):
        return Resolution(FOREIGN)
    if name == domain:
        return Resolution(ANSWER)  # the zone's apex: exists, no records of ours
    labels = name[: -len(domain) - 1].split(".")
    want_addr = qtype in ("A", "AAAA", "ANY")
    want_srv = qtype in ("SRV", "ANY")

    if len(labels) == 2 and labels[0].startswith("_") and labels[1].startswith("_"):
        service, proto = labels[0][1:], labels[1][1:]
        if service not in view.known_services:
            return Resolution(NXDOMAIN)
        eps = [ep for ep in view.healthy.get(service, ()) if ep.transport == proto]
        if not want_srv:
            return Resolution(ANSWER)
        return _srv_answer(name, eps, domain)

    if len(labels) == 1:
        service = labels[0]
        if service not in view.known_services:
            return Resolution(NXDOMAIN)
        eps = list(view.healthy.get(service, ()))
    elif len(labels) == 2:
        label, service = labels
        eps = list(view.by_label.get((label, service), ()))
        if not eps and not any(ep.label == label and ep.service == service for ep in view.endpoints):
            return Resolution(NXDOMAIN)
    else:
        return Resolution(NXDOMAIN)

    answers: list[Record] = []
    if want_addr:
        seen = set()
        for ep in eps:
            rec = _address_record(name, ep)
            if rec is not None and (qtype == "ANY" or rec.rtype == qtype) and rec.data not in seen:
                seen.add(rec.data)
                answers.append(rec)
    if want_srv:
        return _srv_answer(name, eps, domain, extra=answers)
    return Resolution(ANSWER, tuple(answers))


def _srv_answer(name: str, eps: list[Endpoint], domain: str, extra: list[Record] | None = None) -> Resolution:
    answers = list(extra or []) + [_srv(name, ep, domain) for ep in eps]
    additional = []
    for ep in eps:
        rec = _address_record(f"{ep.label}.{ep.service}.{domain}", ep)
        if rec is not None and rec not in additional:
            additional.append(rec)
    return Resolution(ANSWER, tuple(answers), tuple(additional))
