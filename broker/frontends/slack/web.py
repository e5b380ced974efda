"""Slack's Web API over httpx: one method call, rate limits, file downloads.

Every call is ``POST {api_base_url}{method}`` with the token as a bearer
header and a JSON body; Slack answers HTTP 200 with ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A 429 carries ``Retry-After`` (seconds):
the call waits that long and is sent again, for as long as the caller's
cancel scope allows. No answer at all (connection refused, reset, a 5xx, a
body that is not JSON) is :class:`SlackUnavailable`, for the caller to keep
the reply in its outbox; ``ok: false`` is :class:`SlackApiError`.

The bot token goes only to the API's own host and to Slack's file host
(``files.slack.com``) over https: a file URL pointing elsewhere is refused.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from typing import Any

import httpx
import trio

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_SECS = 1.0
MAX_RETRY_AFTER_SECS = 300.0
# Errors that no retry mends: the token is wrong, revoked or lacks a scope.
FATAL_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "team_access_not_granted",
        "forbidden_team",
        "ekm_access_denied",
    }
)
FILE_HOSTS = ("files.slack.com",)


class SlackApiError(Exception):
    """Slack answered ``ok: false``; ``error`` is its code (``invalid_auth``...)."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error

    @property
    def fatal(self) -> bool:
        return self.error in FATAL_ERRORS


class SlackUnavailable(Exception):
    """Slack gave no usable answer (no connection, a 5xx, not JSON)."""


def retry_after(response: httpx.Response) -> float | None:
    """For a 429, the seconds ``Retry-After`` asks to wait (1 when it is
    missing or unreadable, at most 300); None for any other status."""
    if response.status_code != 429:
        return None
    try:
        secs = float(response.headers.get("retry-after", ""))
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECS
    if not math.isfinite(secs) or secs < 0:
        return DEFAULT_RETRY_AFTER_SECS
    return min(secs, MAX_RETRY_AFTER_SECS)


def may_send_token(url: str, api_base_url: str) -> bool:
    """Whether the bot token may go with a request to ``url``: the API's own
    host (any scheme the API uses), or Slack's file host over https."""
    target = urllib.parse.urlsplit(url)
    api = urllib.parse.urlsplit(api_base_url)
    if (target.scheme, target.netloc) == (api.scheme, api.netloc):
        return True
    return target.scheme == "https" and target.hostname in FILE_HOSTS


class SlackWeb:
    """Calls to one Slack workspace's Web API through ``client``."""

    def __init__(self, api_base_url: str, client: httpx.AsyncClient) -> None:
        self.api_base_url = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self.client = client
        self.calls = 0
        self.rate_limited = 0

    async def call(self, method: str, token: str, args: dict[str, Any] | None = None) -> Any:
        """Call ``method`` with ``token``; the parsed answer (``ok`` is true).

        Waits out every 429 and tries again. Raises :class:`SlackApiError`
        for ``ok: false`` and :class:`SlackUnavailable` when Slack does not
        answer usably.
        """
        url = self.api_base_url + method
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            self.calls += 1
            try:
                if args is None:
                    response = await self.client.post(url, headers=headers)
                else:
                    response = await self.client.post(url, headers=headers, json=args)
            except httpx.HTTPError as exc:
                raise SlackUnavailable(f"{method}: {type(exc).__name__}: {exc}") from None
            wait = retry_after(response)
            if wait is not None:
                self.rate_limited += 1
                log.info("slack %s: rate limited, retrying in %.1f s", method, wait)
                await trio.sleep(wait)
                continue
            if response.status_code != 200:
                raise SlackUnavailable(f"{method}: HTTP {response.status_code}")
            try:
                answer = response.json()
            except ValueError:
                raise SlackUnavailable(f"{method}: the answer is not JSON") from None
            if not isinstance(answer, dict):
                raise SlackUnavailable(f"{method}: the answer is not a JSON object")
            if not answer.get("ok"):
                raise SlackApiError(method, str(answer.get("error") or "unknown_error"))
            return answer

    async def download(self, url: str, token: str, limit: int) -> bytes | None:
        """The content at ``url`` (a file's ``url_private_download``), fetched
        with ``token``; None when it is over ``limit`` bytes (nothing more is
        read). Raises :class:`SlackUnavailable` when it cannot be fetched or
        ``url`` is not a host the token may go to."""
        if not may_send_token(url, self.api_base_url):
            raise SlackUnavailable(f"refusing to send the bot token to {url.split('?')[0]}")
        try:
            async with self.client.stream(
                "GET", url, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status_code != 200:
                    raise SlackUnavailable(f"file download: HTTP {response.status_code}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        return None
                return bytes(data)
        except httpx.HTTPError as exc:
            raise SlackUnavailable(f"file download: {type(exc).__name__}") from None
