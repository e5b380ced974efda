"""Discord's REST rate limits as synchronous decisions (no I/O, no waiting).

A request belongs to a *route*: the method and the path with every id but the
top-level one (channel, guild, webhook + token) replaced, so
``PATCH /channels/1/messages/2`` and ``PATCH /channels/1/messages/3`` share a
limit and ``/channels/9/...`` has its own. Responses name the limit's bucket
(``X-RateLimit-Bucket``) and say how many requests are left in it
(``X-RateLimit-Remaining``) and when it refills (``X-RateLimit-Reset-After``);
answers of one window (the same ``X-RateLimit-Reset``) may arrive in any order,
so the lowest count wins, and a late answer from an earlier window is ignored.
Until a route's first answer, one request at a time goes out on it.

The global limit (50 requests per second for a bot) is kept by counting each
request from when it is sent until one second after its answer: Discord counts
it on arrival, somewhere in between, so no second of arrivals can hold more. A
429 with ``global: true`` pauses everything for its ``retry_after``. Interaction
callbacks and webhooks are outside the global limit, as Discord documents.

:meth:`RateLimiter.acquire` returns how long to wait (0: send now, and the
request is counted); the caller sleeps and asks again. :meth:`RateLimiter.update`
takes each response's headers, :meth:`RateLimiter.limited` each 429.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Mapping

import attrs

GLOBAL_PER_SECOND = 50

_MAJOR = re.compile(r"^/(channels|guilds)/(\d+)|^/webhooks/(\d+)/([^/]+)")
_ID = re.compile(r"/\d{5,}")


@attrs.frozen
class Route:
    """``key`` groups requests that share a limit; ``global_limit`` False for interactions."""

    key: str
    global_limit: bool = True


def route_for(method: str, path: str) -> Route:
    """The route of ``method path`` (``path`` without the ``/api/v10`` prefix)."""
    if path.startswith("/interactions/"):
        return Route(f"{method} {path}", global_limit=False)
    match = _MAJOR.match(path)
    major = match.group(0) if match else ""
    rest = _ID.sub("/:id", path[len(major) :])
    rest = re.sub(r"/reactions/[^/]+", "/reactions/:emoji", rest)
    return Route(f"{method} {major}{rest}", global_limit=not path.startswith("/webhooks/"))


@attrs.define
class Bucket:
    limit: int = 1
    remaining: int = 1
    reset_at: float = 0.0
    known: bool = False  # a response has told us the limit
    in_flight: int = 0
    window: float = 0.0  # X-RateLimit-Reset (epoch seconds) of the window the counts are for


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(headers[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


class RateLimiter:
    """Buckets per route and the global limit; see the module docstring."""

    def __init__(self, global_per_second: int = GLOBAL_PER_SECOND) -> None:
        self.global_per_second = global_per_second
        self.global_until = 0.0
        self._bucket_of: dict[str, str] = {}  # route key -> X-RateLimit-Bucket + major
        self._buckets: dict[str, Bucket] = {}
        self._released: collections.deque[float] = collections.deque()  # answer + 1 s
        self._global_in_flight = 0
        self.limited_count = 0  # 429s received

    def _bucket(self, route: Route) -> Bucket:
        name = self._bucket_of.get(route.key, route.key)
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = Bucket()
        return bucket

    def acquire(self, route: Route, now: float) -> float:
        """Seconds to wait before sending on ``route``; 0 means go, and counts the request."""
        bucket = self._bucket(route)
        waits = [0.0]
        if route.global_limit:
            waits.append(self.global_until - now)
            while self._released and self._released[0] <= now:
                self._released.popleft()
            if len(self._released) + self._global_in_flight >= self.global_per_second:
                waits.append(self._released[0] - now if self._released else 0.05)
        if bucket.known:
            if now >= bucket.reset_at and bucket.remaining < bucket.limit:
                bucket.remaining = bucket.limit
            if bucket.remaining - bucket.in_flight <= 0:
                waits.append(bucket.reset_at - now if now < bucket.reset_at else 0.05)
        elif bucket.in_flight > 0:
            waits.append(0.05)  # the first answer tells the limit; wait for it
        wait = max(waits)
        if wait > 0:
            return wait
        bucket.in_flight += 1
        if route.global_limit:
            self._global_in_flight += 1
        return 0.0

    def update(self, route: Route, headers: Mapping[str, str], now: float) -> None:
        """The response to a request :meth:`acquire` let through (any status)."""
        bucket = self._bucket(route)
        bucket.in_flight = max(0, bucket.in_flight - 1)
        if route.global_limit:
            self._global_in_flight = max(0, self._global_in_flight - 1)
            self._released.append(now + 1.0)
        name = headers.get("x-ratelimit-bucket")
        if name:
            major = route.key.split(" ", 1)[1]
            major_match = _MAJOR.match(major)
            key = f"{name}:{major_match.group(0) if major_match else ''}"
            if self._bucket_of.get(route.key) != key:
                self._bucket_of[route.key] = key
                bucket = self._buckets.setdefault(key, bucket)
        limit = _number(headers, "x-ratelimit-limit")
        remaining = _number(headers, "x-ratelimit-remaining")
        reset_after = _number(headers, "x-ratelimit-reset-after")
        window = _number(headers, "x-ratelimit-reset") or 0.0
        if limit is not None and remaining is not None and reset_after is not None:
            if bucket.known and window and window == bucket.window:
                # Answers of one window may come in any order: the lowest count is the latest.
                bucket.remaining = min(bucket.remaining, int(remaining))
            elif not bucket.known or not window or window > bucket.window:
                bucket.remaining = int(remaining)
                bucket.reset_at = now + reset_after
                bucket.window = window
            # else: a late answer from a window already over; it says nothing new
            bucket.known = True
            bucket.limit = max(1, int(limit))
        elif not bucket.known:
            bucket.known = True  # no limit on this route: let requests through
            bucket.limit = bucket.remaining = 1 << 30

    def limited(self, route: Route, retry_after: float, is_global: bool, now: float) -> None:
        """A 429 on ``route``: nothing goes out on it (or anywhere, when global) for
        ``retry_after`` seconds. Call after :meth:`update` for the same response."""
        self.limited_count += 1
        if is_global:
            self.global_until = max(self.global_until, now + retry_after)
            return
        bucket = self._bucket(route)
        bucket.known = True
        bucket.remaining = 0
        bucket.reset_at = max(bucket.reset_at, now + retry_after)
