"""Prometheus metrics of one fleetd (text format at /metrics), in a registry of its own.

- cluster view, read from etcd at scrape time: units by desired and current state, unit states
  by systemd active state, machines; `fleet_registry_up` is 0 when etcd could not be read;
- this fleetd's engine and agent counters (engine.stats, agent.stats), read at scrape time;
- latencies of etcd calls (through Registry.set_call_observer) and of API requests.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleetd.errors import RegistryError
from fleetd.model import DesiredState
from fleetd.registry import Registry
from fleetd.wire import unit_infos

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Histogram:
    """Observations of one label set: counts per bucket (not cumulative), sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value


def _histogram_family(prom: Any, name: str, doc: str, label: str, series: dict[str, _Histogram]):
    from prometheus_client.utils import floatToGoString

    family = prom.HistogramMetricFamily(name, doc, labels=[label])
    bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    for value, h in sorted(series.items()):
        cumulative, running = [], 0
        for bound, n in zip(bounds, h.counts):
            running += n
            cumulative.append((bound, running))
        family.add_metric([value], cumulative, h.total)
    return family


def _labelled(prom: Any, kind: str, name: str, doc: str, label: str, values: dict[str, float]):
    family = getattr(prom, kind)(name, doc, labels=[label])
    for value, n in sorted(values.items()):
        family.add_metric([value], n)
    return family


class _Families:
    """Everything ApiMetrics knows, as metric families, built when scraped (no I/O)."""

    def __init__(self, metrics: "ApiMetrics"):
        self.metrics = metrics

    def collect(self):
        from prometheus_client import core as prom

        m = self.metrics
        yield _labelled(prom, "GaugeMetricFamily", "fleet_units", "Units in the cluster by desired state",
                        "desired_state", m.units)
        yield _labelled(prom, "GaugeMetricFamily", "fleet_units_current", "Non-global units by current state",
                        "state", m.units_current)
        yield _labelled(prom, "GaugeMetricFamily", "fleet_unit_states",
                        "Published unit states by systemd active state", "active_state", m.unit_states)
        yield prom.GaugeMetricFamily("fleet_machines", "Live machines in the cluster", value=m.machines)
        yield prom.GaugeMetricFamily("fleet_registry_up", "1 if etcd answered the last scrape", value=m.registry_up)
        yield _histogram_family(prom, "fleet_etcd_request_duration_seconds", "etcd calls by operation",
                                "operation", m.etcd_latency)
        yield _labelled(prom, "CounterMetricFamily", "fleet_etcd_request_failures",
                        "Failed etcd calls by operation", "operation", m.etcd_failures)
        requests = prom.CounterMetricFamily("fleet_api_requests", "API requests by method and status code",
                                            labels=["method", "code"])
        for (method, code), n in sorted(m.requests.items()):
            requests.add_metric([method, code], n)
        yield requests
        yield _histogram_family(prom, "fleet_api_request_duration_seconds", "API request durations",
                                "method", m.request_latency)
        yield from self._daemon(prom, m.engine, m.agent)

    @staticmethod
    def _daemon(prom: Any, engine: Any, agent: Any):
        """engine.stats and agent.stats."""
        if engine is not None:
            stats = engine.stats
            yield prom.GaugeMetricFamily("fleet_engine_leader", "1 if this fleetd's engine is the leader",
                                         value=1 if getattr(engine, "is_leader", False) else 0)
            yield prom.CounterMetricFamily("fleet_engine_reconcile_passes", "Engine reconciliation passes",
                                           value=stats.passes)
            yield prom.CounterMetricFamily("fleet_engine_placements",
                                           "Scheduling decisions: units placed on a machine", value=stats.placements)
            yield prom.CounterMetricFamily("fleet_engine_unplacements",
                                           "Scheduling decisions: units taken off a machine",
                                           value=stats.unplacements)
            yield prom.GaugeMetricFamily("fleet_engine_last_reconcile_duration_seconds",
                                         "Duration of the engine's last reconciliation pass",
                                         value=stats.last_pass_seconds)
        if agent is not None:
            stats = agent.stats
            yield prom.CounterMetricFamily("fleet_agent_reconcile_passes", "Agent reconciliation passes",
                                           value=stats.passes)
            yield prom.CounterMetricFamily("fleet_agent_tasks", "systemd tasks completed by the agent",
                                           value=stats.tasks)
            yield prom.CounterMetricFamily("fleet_agent_task_failures", "Agent passes that ended in a failed task",
                                           value=stats.failures)
            yield prom.CounterMetricFamily("fleet_agent_states_published", "Unit states published to etcd",
                                           value=stats.states_published)
            yield prom.GaugeMetricFamily("fleet_agent_desired_units", "Units this agent should run",
                                         value=stats.desired_units)


class ApiMetrics:
    """Recorded in plain Python from start-up; prometheus-client (about 1 MB of imports that a
    fleetd nobody scrapes would carry for nothing) is imported by the first scrape only."""

    def __init__(self, engine: Any = None, agent: Any = None):
        self.engine = engine
        self.agent = agent
        self.units: dict[str, float] = {}
        self.units_current: dict[str, float] = {}
        self.unit_states: dict[str, float] = {}
        self.machines = 0.0
        self.registry_up = 0.0
        self.etcd_latency: dict[str, _Histogram] = {}
        self.etcd_failures: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_latency: dict[str, _Histogram] = {}
        self._registry = None

    # hooks -------------------------------------------------------------------------------

    def observe_etcd(self, operation: str, seconds: float, ok: bool) -> None:
        if (h := self.etcd_latency.get(operation)) is None:
            h = self.etcd_latency[operation] = _Histogram()
        h.observe(seconds)
        if not ok:
            self.etcd_failures[operation] += 1

    def observe_request(self, method: str, code: int, seconds: float) -> None:
        self.requests[method, str(code)] += 1
        if (h := self.request_latency.get(method)) is None:
            h = self.request_latency[method] = _Histogram()
        h.observe(seconds)

    # scrape ------------------------------------------------------------------------------

    async def refresh_cluster(self, registry: Registry, timeout: float) -> None:
        try:
            units, placements, states, machines = await asyncio.wait_for(asyncio.gather(
                registry.list_units(), registry.placements(), registry.unit_states(), registry.list_machines(),
            ), timeout)
        except (RegistryError, asyncio.TimeoutError):
            self.registry_up = 0.0
            return
        self.registry_up = 1.0
        desired = Counter(u.desired_state.value for u in units)
        self.units = {state.value: float(desired.get(state.value, 0)) for state in DesiredState}
        current = Counter(i.current_state for i in unit_infos(units, placements, states) if i.current_state)
        self.units_current = {state.value: float(current.get(state.value, 0)) for state in DesiredState}
        active = Counter(s.active_state or "unknown" for s in states)
        # states that disappeared drop to 0 rather than vanish
        self.unit_states = {key: 0.0 for key in self.unit_states} | {k: float(n) for k, n in active.items()}
        self.machines = float(len(machines))

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(_Families(self))
        return generate_latest(self._registry)

