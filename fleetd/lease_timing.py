"""When a machine sends lease keep-alives, and until when its lease is known to be alive.

Pure timing, no I/O (fleetd/presence.py does the talking):

- etcd counts a lease's TTL from the moment its leader received the last keep-alive, which
  is after the moment it was sent. So a keep-alive sent at `s` and answered with TTL `t`
  proves the lease cannot expire before `s + t` (`lease_deadline`): the agent must have
  stopped its units by then, and until then it may keep them running.
- Keep-alives go out every TTL/3, as in fleet, unless that would leave less than
  `MIN_HEADROOM` after a network cut (or a frozen etcd member) of half the TTL to reach etcd
  again (`keepalive_interval`): only TTLs below 4.8 s get more frequent keep-alives. More
  frequent ones at larger TTLs would buy margin at the price of failover time (etcd expires a
  crashed machine's lease one TTL after its last keep-alive: the more recent that one, the
  later) and of etcd load; a fresh confirmation after a cut is the job of presence.py's
  retries over new connections instead.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_INTERVAL = 0.5  # never keep a lease alive more often than this (etcd load)
MIN_HEADROOM = 0.8  # seconds left to confirm the lease after a cut of half the TTL, at least


def lease_ttl_seconds(ttl: float) -> int:
    """The TTL a lease is granted with for an agent_ttl of `ttl` seconds (etcd takes whole
    seconds; fleetd asks for at least 2)."""
    return max(2, int(round(ttl)))


def keepalive_interval(ttl: float) -> float:
    """Seconds between keep-alives of a lease with this TTL while etcd answers.

    A cut of half the TTL that starts just before a keep-alive is due leaves
    `ttl/2 - interval` seconds after it heals to confirm the lease. fleet's TTL/3 leaves
    ttl/6, at least `MIN_HEADROOM` from a TTL of 4.8 s on; below, the interval shrinks to
    keep that headroom, but not under `MIN_INTERVAL`: ttl 2 s -> 0.5 s (0.5 s left),
    3 s -> 0.7 s, 4 s -> 1.2 s, 5 s -> 1.67 s, 30 s -> 10 s.
    """
    return max(MIN_INTERVAL, min(ttl / 3, ttl / 2 - MIN_HEADROOM))


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
