"""Prometheus metrics of one fleetd (text format at /metrics), in a registry of its own.

- cluster view, read from etcd at scrape time: units by desired and current state, unit states
  by systemd active state, machines; `fleet_registry_up` is 0 when etcd could not be read;
- this fleetd's engine and agent counters (engine.stats, agent.stats), read at scrape time;
- latencies of etcd calls (through Registry.set_call_observer) and of API requests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fleetd.errors import RegistryError
from fleetd.jobstate import current_state_of
from fleetd.model import DesiredState
from fleetd.registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _DaemonCollector:
    """engine.stats and agent.stats as metric families, read when scraped (no I/O)."""

    def __init__(self, engine: Any, agent: Any):
        self.engine = engine
        self.agent = agent

    def collect(self):
        engine, agent = self.engine, self.agent
        if engine is not None:
            stats = engine.stats
            yield GaugeMetricFamily("fleet_engine_leader", "1 if this fleetd's engine is the leader",
                                    value=1 if getattr(engine, "is_leader", False) else 0)
            yield CounterMetricFamily("fleet_engine_reconcile_passes", "Engine reconciliation passes",
                                      value=stats.passes)
            yield CounterMetricFamily("fleet_engine_placements", "Scheduling decisions: units placed on a machine",
                                      value=stats.placements)
            yield CounterMetricFamily("fleet_engine_unplacements", "Scheduling decisions: units taken off a machine",
                                      value=stats.unplacements)
            yield GaugeMetricFamily("fleet_engine_last_reconcile_duration_seconds",
                                    "Duration of the engine's last reconciliation pass",
                                    value=stats.last_pass_seconds)
        if agent is not None:
            stats = agent.stats
            yield CounterMetricFamily("fleet_agent_reconcile_passes", "Agent reconciliation passes", value=stats.passes)
            yield CounterMetricFamily("fleet_agent_tasks", "systemd tasks completed by the agent", value=stats.tasks)
            yield CounterMetricFamily("fleet_agent_task_failures", "Agent passes that ended in a failed task",
                                      value=stats.failures)
            yield CounterMetricFamily("fleet_agent_states_published", "Unit states published to etcd",
                                      value=stats.states_published)
            yield GaugeMetricFamily("fleet_agent_desired_units", "Units this agent should run",
                                    value=len(stats.desired))


class ApiMetrics:
    def __init__(self, engine: Any = None, agent: Any = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.units = Gauge("fleet_units", "Units in the cluster by desired state", ["desired_state"], registry=r)
        self.units_current = Gauge("fleet_units_current", "Non-global units by current state", ["state"], registry=r)
        self.unit_states = Gauge("fleet_unit_states", "Published unit states by systemd active state",
                                 ["active_state"], registry=r)
        self.machines = Gauge("fleet_machines", "Live machines in the cluster", registry=r)
        self.registry_up = Gauge("fleet_registry_up", "1 if etcd answered the last scrape", registry=r)
        self.etcd_latency = Histogram("fleet_etcd_request_duration_seconds", "etcd calls by operation",
                                      ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.etcd_failures = PromCounter("fleet_etcd_request_failures", "Failed etcd calls by operation",
                                         ["operation"], registry=r)
        self.requests = PromCounter("fleet_api_requests", "API requests by method and status code",
                                    ["method", "code"], registry=r)
        self.request_latency = Histogram("fleet_api_request_duration_seconds", "API request durations",
                                         ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self._seen_active: set[str] = set()
        if engine is not None or agent is not None:
            r.register(_DaemonCollector(engine, agent))

    # hooks -------------------------------------------------------------------------------

    def observe_etcd(self, operation: str, seconds: float, ok: bool) -> None:
        self.etcd_latency.labels(operation).observe(seconds)
        if not ok:
            self.etcd_failures.labels(operation).inc()

    def observe_request(self, method: str, code: int, seconds: float) -> None:
        self.requests.labels(method, str(code)).inc()
        self.request_latency.labels(method).observe(seconds)

    # scrape ------------------------------------------------------------------------------

    async def refresh_cluster(self, registry: Registry, timeout: float) -> None:
        try:
            units, placements, states, machines = await asyncio.wait_for(asyncio.gather(
                registry.list_units(), registry.placements(), registry.unit_states(), registry.list_machines(),
            ), timeout)
        except (RegistryError, asyncio.TimeoutError):
            self.registry_up.set(0)
            return
        self.registry_up.set(1)
        desired = Counter(u.desired_state.value for u in units)
        for state in DesiredState:
            self.units.labels(state.value).set(desired.get(state.value, 0))
        by_name: dict[str, list] = {}
        for s in states:
            by_name.setdefault(s.name, []).append(s)
        current = Counter()
        for u in units:
            state, _ = current_state_of(u, placements.get(u.name), by_name.get(u.name, []))
            if state:
                current[state] += 1
        for state in DesiredState:
            self.units_current.labels(state.value).set(current.get(state.value, 0))
        active = Counter(s.active_state or "unknown" for s in states)
        self._seen_active |= set(active)
        for key in self._seen_active:  # states that disappeared drop to 0
            self.unit_states.labels(key).set(active.get(key, 0))
        self.machines.set(len(machines))

    def render(self) -> bytes:
        return generate_latest(self.registry)

