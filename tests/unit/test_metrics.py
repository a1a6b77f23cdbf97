"""fleetd.api.metrics without etcd: what is recorded, how it renders, and that prometheus-client
is only imported by the first scrape (fleetd's idle memory, docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

from fleetd.api.metrics import LATENCY_BUCKETS, ApiMetrics


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_histogram_buckets_are_cumulative_and_inclusive():
    m = ApiMetrics()
    for seconds in (0.001, 0.002, 0.3, 10.0, 20.0):  # on a bound, between, and past the last
        m.observe_etcd("txn", seconds, True)
    m.observe_etcd("range", 0.01, False)
    got = samples(m.render().decode())
    bucket = 'fleet_etcd_request_duration_seconds_bucket{le="%s",operation="txn"}'
    assert got[bucket % "0.001"] == 1
    assert got[bucket % "0.0025"] == 2
    assert got[bucket % "0.25"] == 2
    assert got[bucket % "0.5"] == 3
    assert got[bucket % "10.0"] == 4
    assert got[bucket % "+Inf"] == 5
    assert got['fleet_etcd_request_duration_seconds_count{operation="txn"}'] == 5
    assert abs(got['fleet_etcd_request_duration_seconds_sum{operation="txn"}'] - 30.303) < 1e-9
    assert got['fleet_etcd_request_failures_total{operation="range"}'] == 1
    assert 'fleet_etcd_request_failures_total{operation="txn"}' not in got
    buckets = [k for k in got if k.startswith("fleet_etcd_request_duration_seconds_bucket") and "txn" in k]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1


def test_requests_by_method_and_code_and_later_scrapes_see_new_values():
    m = ApiMetrics()
    m.observe_request("GET", 200, 0.004)
    first = samples(m.render().decode())
    assert first['fleet_api_requests_total{code="200",method="GET"}'] == 1
    m.observe_request("GET", 200, 0.004)
    m.observe_request("PUT", 409, 0.02)
    second = samples(m.render().decode())
    assert second['fleet_api_requests_total{code="200",method="GET"}'] == 2
    assert second['fleet_api_requests_total{code="409",method="PUT"}'] == 1
    assert second['fleet_api_request_duration_seconds_count{method="GET"}'] == 2


def test_prometheus_client_is_imported_by_the_first_scrape_only():
    script = (
        "import sys\n"
        "import fleetd.api.server\n"
        "from fleetd.api.metrics import ApiMetrics\n"
        "m = ApiMetrics()\n"
        "m.observe_etcd('txn', 0.01, True); m.observe_request('GET', 200, 0.01)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported before a scrape'\n"
        "assert b'fleet_api_requests_total' in m.render()\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
