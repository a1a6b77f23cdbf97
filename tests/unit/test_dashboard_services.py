"""The dashboard's services page from service discovery's endpoints (pure)."""

from __future__ import annotations

import asyncio

from fleetd.api.dashboard import endpoints_provider, services_of_endpoints
from fleetd.model import CRITICAL, Endpoint


def ep(n: int, service: str = "web", health: str = "passing") -> Endpoint:
    return Endpoint(service, f"{service}@{n}.service", f"{n:032x}", f"10.0.0.{n}", 8000 + n, "http", (), health)


def test_rows_per_service_sorted_with_health():
    rows = services_of_endpoints([ep(2, health=CRITICAL), ep(3, "db"), ep(1)])
    assert [r["name"] for r in rows] == ["db", "web"]
    assert rows[1]["endpoints"] == [
        {"address": "10.0.0.1", "port": 8001, "machine": f"{1:032x}", "unit": "web@1.service", "healthy": True},
        {"address": "10.0.0.2", "port": 8002, "machine": f"{2:032x}", "unit": "web@2.service", "healthy": False},
    ]
    assert services_of_endpoints([]) == []


def test_provider_reads_its_source_on_each_call():
    calls = []

    async def source():
        calls.append(1)
        return [ep(1)]

    provider = endpoints_provider(source)
    assert asyncio.run(provider(None))[0]["name"] == "web"
    assert asyncio.run(provider(None))[0]["endpoints"][0]["unit"] == "web@1.service"
    assert len(calls) == 2
