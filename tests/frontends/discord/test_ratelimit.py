"""REST rate limits: buckets, the global limit and 429s, under trio's virtual clock."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from broker.frontends.discord.ratelimit import RateLimiter, route_for
from broker.frontends.discord.rest import DiscordHTTPError, DiscordUnavailable, Rest


def test_edits_of_one_channel_share_a_route_and_other_channels_do_not() -> None:
    a = route_for("PATCH", "/channels/111111/messages/222222")
    b = route_for("PATCH", "/channels/111111/messages/333333")
    c = route_for("PATCH", "/channels/999999/messages/222222")
    assert a == b
    assert a != c
    assert route_for("PUT", "/channels/1/messages/222222/reactions/%F0%9F%91%80/@me").key == (
        "PUT /channels/1/messages/:id/reactions/:emoji/@me"
    )


def test_interaction_callbacks_are_outside_the_global_limit() -> None:
    assert not route_for("POST", "/interactions/123456/tok/callback").global_limit
    assert not route_for("POST", "/webhooks/123456/tok").global_limit
    assert route_for("POST", "/channels/123456/messages").global_limit


def test_an_exhausted_bucket_waits_until_its_reset() -> None:
    limiter = RateLimiter()
    route = route_for("POST", "/channels/123456/messages")
    assert limiter.acquire(route, 0.0) == 0.0
    headers = {
        "x-ratelimit-limit": "5",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset-after": "2.5",
        "x-ratelimit-bucket": "abc",
    }
    limiter.update(route, headers, 0.5)
    assert limiter.acquire(route, 1.0) == 2.0
    assert limiter.acquire(route, 3.0) == 0.0  # refilled


def test_until_a_route_answers_one_request_at_a_time_goes_out() -> None:
    limiter = RateLimiter()
    route = route_for("POST", "/channels/123456/messages")
    assert limiter.acquire(route, 0.0) == 0.0
    assert limiter.acquire(route, 0.0) > 0
    limiter.update(
        route,
        {"x-ratelimit-limit": "5", "x-ratelimit-remaining": "4", "x-ratelimit-reset-after": "5"},
        0.1,
    )
    assert limiter.acquire(route, 0.1) == 0.0


def test_the_global_limit_spreads_requests_over_seconds() -> None:
    limiter = RateLimiter(global_per_second=3)
    routes = [route_for("GET", f"/channels/{100000 + i}") for i in range(4)]
    assert [limiter.acquire(r, 0.0) for r in routes[:3]] == [0.0, 0.0, 0.0]
    for route in routes[:3]:
        limiter.update(route, {}, 0.1)
    # Each counts until a second after its answer, which it may have reached just then.
    assert limiter.acquire(routes[3], 0.25) == pytest.approx(0.85)
    assert limiter.acquire(routes[3], 1.1) == 0.0


def _limited(retry_after: float, *, is_global: bool = False) -> httpx.Response:
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": is_global,
    }
    return httpx.Response(429, json=body, headers={"retry-after": str(int(retry_after) + 1)})


async def test_a_429_is_waited_out_for_retry_after_and_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(trio.current_time())
        if len(sent_at) == 1:
            return _limited(2.5)
        return httpx.Response(
            200, json={"id": "1", "content": json.loads(request.content)["content"]}
        )

    rest = Rest("http://discord.test/api/v10", "T", transport=httpx.MockTransport(handler))
    start = trio.current_time()
    message = await rest.call("PATCH", "/channels/123456/messages/1", {"content": "hi"})
    await rest.aclose()
    assert message == {"id": "1", "content": "hi"}
    assert [t - start for t in sent_at] == [0.0, 2.5]
    assert rest.limiter.limited_count == 1


async def test_a_global_429_holds_every_route(autojump_clock: trio.testing.MockClock) -> None:
    sent: list[tuple[float, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((trio.current_time(), request.url.path))
        if len(sent) == 1:
            return _limited(1.5, is_global=True)
        return httpx.Response(204)

    rest = Rest("http://discord.test/api/v10", "T", transport=httpx.MockTransport(handler))
    start = trio.current_time()
    await rest.call("DELETE", "/channels/111111/messages/1/reactions/x/@me")
    await rest.call("DELETE", "/channels/222222/messages/1/reactions/x/@me")
    await rest.aclose()
    assert [round(t - start, 3) for t, _ in sent] == [0.0, 1.5, 1.5]


async def test_errors_say_whether_to_try_again(autojump_clock: trio.testing.MockClock) -> None:
    answers = iter(
        [
            httpx.Response(503),
            httpx.Response(404, json={"message": "Unknown Channel", "code": 10003}),
            httpx.Response(400, json={"message": "Invalid Form Body", "code": 50035}),
        ]
    )
    rest = Rest(
        "http://discord.test/api/v10",
        "secret-token",
        transport=httpx.MockTransport(lambda _: next(answers)),
    )
    with pytest.raises(DiscordUnavailable):
        await rest.call("POST", "/channels/123456/messages", {"content": "x"})
    with pytest.raises(DiscordHTTPError) as gone:
        await rest.call("POST", "/channels/123456/messages", {"content": "x"})
    assert gone.value.gone and gone.value.code == 10003
    with pytest.raises(DiscordHTTPError) as bad:
        await rest.call("POST", "/channels/123456/messages", {"content": "x"})
    assert not bad.value.gone
    assert "secret-token" not in str(bad.value)
    await rest.aclose()


async def test_the_token_goes_in_the_authorization_header_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    rest = Rest("http://discord.test/api/v10", "T0K", transport=httpx.MockTransport(handler))
    await rest.call("GET", "/gateway/bot")
    await rest.aclose()
    assert seen[0].headers["authorization"] == "Bot T0K"
    assert seen[0].headers["user-agent"].startswith("DiscordBot (")
    assert "T0K" not in str(seen[0].url)


def _window(remaining: int, reset: float, reset_after: float = 1.0) -> dict[str, str]:
    return {
        "x-ratelimit-limit": "5",
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
        "x-ratelimit-reset-after": str(reset_after),
        "x-ratelimit-bucket": "abc",
    }


def test_answers_of_one_window_in_any_order_keep_the_lowest_count() -> None:
    limiter = RateLimiter()
    route = route_for("POST", "/channels/123456/messages")
    limiter.acquire(route, 0.0)
    limiter.update(route, _window(4, 1000.0), 0.0)
    sent = [limiter.acquire(route, 0.0) for _ in range(4)]
    assert sent == [0.0, 0.0, 0.0, 0.0]
    for remaining in (0, 2, 1, 3):  # the answers arrive out of order
        limiter.update(route, _window(remaining, 1000.0), 0.1)
    assert limiter.acquire(route, 0.2) == pytest.approx(0.8)  # wait for the refill at 1.0


def test_a_late_answer_from_a_window_already_over_is_ignored() -> None:
    limiter = RateLimiter()
    route = route_for("POST", "/channels/123456/messages")
    limiter.acquire(route, 0.0)
    limiter.update(route, _window(0, 1002.0, reset_after=2.0), 0.0)
    limiter.acquire(route, 2.0)
    limiter.update(route, _window(4, 1004.0, reset_after=2.0), 2.0)
    limiter.acquire(route, 2.0)
    limiter.update(route, _window(3, 1002.0, reset_after=0.01), 2.1)  # from the old window
    assert limiter._bucket(route).reset_at == 4.0
