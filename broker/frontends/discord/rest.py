"""Discord's REST API (v10) over httpx, inside the rate limits.

:meth:`Rest.call` sends one request and returns the decoded JSON body (None
for 204). It waits for the route's bucket and the global limit first; a 429 is
waited out (``retry_after``) and the request sent again, so a caller never sees
one. What it raises:

* :class:`DiscordUnavailable` — no answer (connection refused, reset, timeout)
  or a 5xx: try again later, the request may not have been done.
* :class:`DiscordHTTPError` — any other 4xx: the request is wrong or its
  target is gone (``status`` 404 with ``code`` 10003 Unknown Channel, 10008
  Unknown Message); sending it again will not help.

Timeouts per request are httpx's (``timeout`` seconds); an overall bound is the
caller's cancel scope. The token only travels in the ``Authorization`` header
and never appears in an error message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from broker.frontends.discord.ratelimit import RateLimiter, route_for

log = logging.getLogger(__name__)

USER_AGENT = "DiscordBot (https://github.com/agent-broker/agent-broker, 0.1.0)"
REQUEST_TIMEOUT_SECS = 15.0
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_INTERACTION = 10062


class DiscordUnavailable(Exception):
    """Discord did not answer, or answered with a 5xx."""


class DiscordHTTPError(Exception):
    """A 4xx other than 429. ``code`` is Discord's JSON error code (0 if none)."""

    def __init__(self, status: int, code: int, message: str, route: str) -> None:
        super().__init__(f"{route}: HTTP {status} (code {code}): {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def gone(self) -> bool:
        """The channel or message no longer exists (deleted thread or message)."""
        return self.status == 404 or self.code in (UNKNOWN_CHANNEL, UNKNOWN_MESSAGE)


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


class Rest:
    """One bot's REST client. ``base_url`` is ``[discord] api_base_url``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limiter: RateLimiter | None = None,
        timeout: float = REQUEST_TIMEOUT_SECS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter or RateLimiter()
        self.requests = 0
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bot {token}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()

    async def call(self, method: str, path: str, body: object = None) -> Any:
        """Send ``method path`` (JSON ``body``), within the limits; see the module docstring."""
        route = route_for(method, path)
        while True:
            wait = self.limiter.acquire(route, trio.current_time())
            if wait > 0:
                await trio.sleep(wait)
                continue
            try:
                response = await self._client.request(
                    method, self.base_url + path, json=body if body is not None else None
                )
            except httpx.HTTPError as exc:
                self.limiter.update(route, {}, trio.current_time())
                raise DiscordUnavailable(f"{route.key}: {type(exc).__name__}") from None
            except BaseException:
                self.limiter.update(route, {}, trio.current_time())
                raise
            self.requests += 1
            now = trio.current_time()
            self.limiter.update(route, response.headers, now)
            if response.status_code == 429:
                data = _body(response) or {}
                retry_after = _retry_after(data, response.headers)
                is_global = bool(data.get("global")) or "x-ratelimit-global" in response.headers
                self.limiter.limited(route, retry_after, is_global, now)
                log.warning(
                    "discord: 429 on %s (%s), retrying after %.2f s",
                    route.key,
                    "global" if is_global else response.headers.get("x-ratelimit-scope", "user"),
                    retry_after,
                )
                continue
            if response.status_code >= 500:
                raise DiscordUnavailable(f"{route.key}: HTTP {response.status_code}")
            if response.status_code >= 400:
                data = _body(response)
                data = data if isinstance(data, dict) else {}
                raise DiscordHTTPError(
                    response.status_code,
                    int(data.get("code") or 0),
                    str(data.get("message") or response.reason_phrase),
                    route.key,
                )
            return _body(response)

    async def download(self, url: str, max_bytes: int) -> bytes:
        """The first ``max_bytes + 1`` bytes at ``url`` (an attachment's CDN URL; no token
        is sent there). Raises :class:`DiscordUnavailable` when it cannot be read."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with (
                httpx.AsyncClient(timeout=self._client.timeout) as cdn,
                cdn.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise DiscordUnavailable(f"attachment: HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        break
        except httpx.HTTPError as exc:
            raise DiscordUnavailable(f"attachment: {type(exc).__name__}") from None
        return b"".join(chunks)[: max_bytes + 1]


def _retry_after(data: Mapping[str, Any], headers: Mapping[str, str]) -> float:
    for value in (data.get("retry_after"), headers.get("retry-after")):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return 1.0


def dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
