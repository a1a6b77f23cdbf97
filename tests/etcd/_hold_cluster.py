"""The engine loop against a real etcd with simulated agents, for the hold tests
(tests/etcd/test_engine_hold*.py: the module was split so that several xdist workers wait
through its TTLs at once)."""

from __future__ import annotations

import asyncio
import time

from fleetd.model import DesiredState, Machine, Unit
from fleetd.unit.file import UnitFile


def unit(name: str, desired: str = "launched", xfleet: str = "") -> Unit:
    text = "[Service]\nExecStart=/bin/sleep 1000\n" + (f"[X-Fleet]\n{xfleet}\n" if xfleet else "")
    return Unit(name, UnitFile.parse(text), DesiredState(desired))


class Cluster:
    """Simulated agents (TTL 2 s) and an engine with the lone-loss evidence wired: leases read
    from the real etcd, the agents' quiet times from `quiet` (by machine index; default long)."""

    def __init__(self, etcd_settings, ttl: float = 2.0):
        self.etcd_settings = etcd_settings
        self.ttl = ttl
        self.regs, self.agents = [], []
        self.quiet: dict[str, float | None] = {}
        self.reg = self.engine = self.task = None
        self.asks = 0  # times the engine asked the agents how long they have been quiet
        self._asked = asyncio.Condition()

    async def __aenter__(self) -> "Cluster":
        from fleetd.engine.evidence import LoneLossEvidence
        from fleetd.engine.leader import Engine
        from fleetd.registry import Registry

        self.reg = await Registry.connect(self.etcd_settings)
        engine_reg = await Registry.connect(self.etcd_settings)
        self.regs += [self.reg, engine_reg]
        self.engine = Engine(engine_reg, "f" * 32, 0.5, lease_ttl=2.0, machine_ttl=self.ttl)

        async def ask_quiet(peers):
            self.asked = sorted(peers)
            answer = {m: self.quiet.get(m, 100.0) for m in peers}
            async with self._asked:
                self.asks += 1
                self._asked.notify_all()
            return answer

        self.asked: list[str] = []
        self.engine.evidence = LoneLossEvidence(engine_reg, ask_quiet)
        return self

    async def wait_asks(self, count: int, within: float = 10.0) -> None:
        """Until the engine has asked the agents `count` times in all (the engine's passes run one
        after the other: once it asks again, the pass that asked before has written its result)."""
        try:
            async with self._asked:
                await asyncio.wait_for(self._asked.wait_for(lambda: self.asks >= count), within)
        except TimeoutError:  # (it stops asking once the lone machine's units have moved)
            raise AssertionError(f"the engine asked the agents {self.asks} time(s), not {count}, "
                                 f"within {within}s") from None

    async def add_agent(self, i: int):
        from fleetd.registry import Registry
        from fleetlab.testing.simagent import SimulatedAgent

        r = await Registry.connect(self.etcd_settings)
        self.regs.append(r)
        agent = SimulatedAgent(r, Machine(f"{i:x}" * 32, f"10.0.0.{i}"), ttl=self.ttl)
        await agent.start()
        self.agents.append(agent)
        return agent

    async def lose(self, agent) -> None:
        """The agent's machine crashes and etcd expires its lease: the engine sees the same
        deletion of the machine's key as after waiting out the TTL, without the wait (what a
        test of the engine's decision then checks is the other machines' leases and answers)."""
        await agent.crash()
        await self.reg.revoke_lease(agent.lease_id)

    async def start(self, units: int) -> dict:
        self.task = asyncio.create_task(self.engine.run())
        await self.reg.create_units([unit(f"u{i}.service") for i in range(units)])
        deadline = time.monotonic() + 15
        while len(placed := await self.reg.placements()) < units:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        return placed

    async def wait_registered(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(await self.reg.list_machines()) != count:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for agent in self.agents:
            await agent.crash()
        for r in self.regs:
            await r.close()
