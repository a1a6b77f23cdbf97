"""Health checks of service endpoints: HTTP (2xx/3xx), TCP connect, or a command (exit 0).

`next_health` (pure) applies the rise/fall thresholds; `run_check` runs one probe with its
timeout; `CheckRunner` bounds how many probes run at once, so that many endpoints on one
machine cost little, and nothing here ever blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from fleetd.unit.service import Check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    healthy: bool = False
    passes: int = 0  # consecutive
    fails: int = 0  # consecutive
    checked: bool = False  # at least one probe finished
    reason: str = ""


def next_health(health: Health, ok: bool, rise: int, fall: int, reason: str = "") -> Health:
    """The health after one probe: healthy after `rise` consecutive passes, unhealthy after
    `fall` consecutive failures; an endpoint never checked before becomes healthy on its first
    `rise` passes and stays unhealthy until then."""
    if ok:
        passes, fails = health.passes + 1, 0
        healthy = health.healthy or passes >= rise
    else:
        passes, fails = 0, health.fails + 1
        healthy = health.healthy and fails < fall
    return Health(healthy, passes, fails, True, "" if ok else reason)


async def _http(url: str, timeout: float, session) -> tuple[bool, str]:
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as resp:
            ok = 200 <= resp.status < 400
            return ok, "" if ok else f"HTTP {resp.status}"
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except Exception as exc:  # aiohttp.ClientError, OSError, ...
        return False, str(exc) or type(exc).__name__


async def _tcp(target: str, timeout: float) -> tuple[bool, str]:
    host, _, port = target.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]") or "127.0.0.1", int(port)),
                                           timeout)
    except asyncio.TimeoutError:
        return False, f"connect timed out after {timeout:g}s"
    except OSError as exc:
        return False, exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True, ""


async def _command(argv: list[str], timeout: float) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return False, f"{argv[0]}: {exc.strerror or exc}"
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"command timed out after {timeout:g}s"
    return code == 0, "" if code == 0 else f"exit status {code}"


async def run_check(check: Check, session=None) -> tuple[bool, str]:
    """One probe: (passed, why not)."""
    if check.kind == "http":
        if session is None:
            import aiohttp

            async with aiohttp.ClientSession() as own:
                return await _http(check.target, check.timeout, own)
        return await _http(check.target, check.timeout, session)
    if check.kind == "tcp":
        return await _tcp(check.target, check.timeout)
    return await _command(check.argv(), check.timeout)


class CheckRunner:
    """Runs probes with at most `concurrency` in flight (one shared HTTP session)."""

    def __init__(self, concurrency: int = 16):
        self._slots = asyncio.Semaphore(concurrency)
        self._session = None

    async def probe(self, check: Check) -> tuple[bool, str]:
        async with self._slots:
            if check.kind == "http" and self._session is None:
                import aiohttp

                self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            return await run_check(check, self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
