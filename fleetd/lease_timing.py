"""When a machine sends lease keep-alives, and until when its lease is known to be alive.

Pure timing, no I/O (fleetd/presence.py does the talking):

- etcd counts a lease's TTL from the moment its leader received the last keep-alive, which
  is after the moment it was sent. So a keep-alive sent at `s` and answered with TTL `t`
  proves the lease cannot expire before `s + t` (`lease_deadline`): the agent must have
  stopped its units by then, and until then it may keep them running.
- Keep-alives are sent often enough that, after a network cut (or a frozen etcd member) of
  half the TTL, at least `min(TTL/3, 2 s)` is left before that deadline to reach etcd again
  (`keepalive_interval`); fleet's TTL/3 is kept for TTLs of 12 s and more (etcd load at scale).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_INTERVAL = 0.5  # never keep a lease alive more often than this (etcd load)
MAX_HEADROOM = 2.0  # seconds left after a cut of half the TTL, at most (see keepalive_interval)


def lease_ttl_seconds(ttl: float) -> int:
    """The TTL a lease is granted with for an agent_ttl of `ttl` seconds (etcd takes whole
    seconds; fleetd asks for at least 2)."""
    return max(2, int(round(ttl)))


def keepalive_interval(ttl: float) -> float:
    """Seconds between keep-alives of a lease with this TTL while etcd answers.

    A cut of half the TTL that starts just before a keep-alive is due leaves
    `ttl/2 - interval` seconds after it heals to confirm the lease; that headroom is
    `min(ttl/3, 2 s)`: ttl 2 s -> 0.5 s (the floor), 5 s -> 0.83 s, 8 s -> 2 s, 12 s and
    more -> ttl/3 (30 s -> 10 s).
    """
    headroom = min(ttl / 3, MAX_HEADROOM)
    return max(MIN_INTERVAL, min(ttl / 3, ttl / 2 - headroom))


def lease_deadline(sent_at: float, granted_ttl: float) -> float:
    """The earliest moment etcd may expire a lease whose keep-alive sent at `sent_at` (a
    monotonic time taken before sending) was answered with `granted_ttl` seconds."""
    return sent_at + granted_ttl


@dataclass(frozen=True)
class KeepaliveTiming:
    """How a machine keeps its lease alive (seconds).

    - `interval`: between keep-alives while etcd answers them;
    - `attempt_timeout`: how long one keep-alive attempt may wait for its answer;
    - `hedge`: an attempt unanswered this long makes the machine try every etcd member
      at once, each on a new connection;
    - `retry`: then a new such round this often until one is answered;
    - `lost_retry`: the same, once the lease may have expired (the agent stopped its units
      and waits to learn whether etcd kept the lease after all).
    """

    ttl: float
    interval: float
    attempt_timeout: float
    hedge: float
    retry: float
    lost_retry: float

    @classmethod
    def for_ttl(cls, ttl: float, request_timeout: float | None = None) -> "KeepaliveTiming":
        interval = keepalive_interval(ttl)
        attempt = max(0.5, request_timeout or 1.0)
        retry = min(0.25, interval / 2)
        return cls(ttl=ttl, interval=interval, attempt_timeout=attempt,
                   hedge=min(0.5, attempt, interval), retry=retry, lost_retry=0.5)
