"""The Web API client: answers, errors, rate limits, where the token may go."""

from __future__ import annotations

import httpx
import pytest
import trio

from broker.frontends.slack.message import blocks, emoji_name, escape
from broker.frontends.slack.web import (
    SlackApiError,
    SlackUnavailable,
    SlackWeb,
    may_send_token,
    retry_after,
)
from broker.frontends.wire import Button, ButtonStyle
from broker.testing.fake_slack import BOT_TOKEN, block_problems, open_fake_slack
from broker.testing.harness import free_port


def test_retry_after_is_read_in_seconds_and_bounded() -> None:
    assert retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    assert retry_after(httpx.Response(429)) == 1.0
    assert retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) == 1.0
    assert retry_after(httpx.Response(429, headers={"Retry-After": "99999"})) == 300.0
    assert retry_after(httpx.Response(200)) is None


def test_the_bot_token_goes_only_to_slack() -> None:
    api = "https://slack.com/api/"
    assert may_send_token("https://slack.com/api/files.info", api)
    assert may_send_token("https://files.slack.com/files-pri/T1-F1/x.png", api)
    assert not may_send_token("http://files.slack.com/files-pri/T1-F1/x.png", api)
    assert not may_send_token("https://evil.example/files.slack.com", api)
    assert may_send_token("http://127.0.0.1:5/files-pri/x", "http://127.0.0.1:5/api/")


async def test_errors_are_told_apart_and_a_429_is_waited_out() -> None:
    async with open_fake_slack() as fake, httpx.AsyncClient() as client:
        web = SlackWeb(fake.api_url, client)
        with trio.fail_after(10):
            assert (await web.call("auth.test", BOT_TOKEN))["user_id"] == "U0BOT"
            with pytest.raises(SlackApiError) as info:
                await web.call("auth.test", "xoxb-wrong")
            assert info.value.error == "invalid_auth" and info.value.fatal
            fake.rate_limit("auth.test", retry_after=0.1, times=2)
            await web.call("auth.test", BOT_TOKEN)
            assert [c.status for c in fake.calls_to("auth.test")][-3:] == [429, 429, 200]
            assert web.rate_limited == 2
            fake.down = True
            with pytest.raises(SlackUnavailable, match="HTTP 503"):
                await web.call("auth.test", BOT_TOKEN)
    closed = SlackWeb(f"http://127.0.0.1:{free_port()}/api/", httpx.AsyncClient())
    with trio.fail_after(10), pytest.raises(SlackUnavailable, match="ConnectError"):
        await closed.call("auth.test", BOT_TOKEN)


async def test_a_download_over_the_limit_stops_reading() -> None:
    async with open_fake_slack() as fake, httpx.AsyncClient() as client:
        web = SlackWeb(fake.api_url, client)
        small = fake.add_file("a.txt", b"abc", "text/plain")
        large = fake.add_file("b.txt", b"x" * 5000, "text/plain")
        with trio.fail_after(10):
            assert await web.download(small["url_private_download"], BOT_TOKEN, 100) == b"abc"
            assert await web.download(large["url_private_download"], BOT_TOKEN, 100) is None
            with pytest.raises(SlackUnavailable, match="refusing"):
                await web.download("https://elsewhere.example/x", BOT_TOKEN, 100)


def test_buttons_are_block_kit_within_its_limits() -> None:
    text = escape("<b> & " + "y" * 5000)
    assert text.startswith("&lt;b&gt; &amp; ")
    buttons = [
        Button(f"Option {n} " + "z" * 80, f"/answer 3 {n}", ButtonStyle.PRIMARY) for n in range(30)
    ]
    buttons.append(Button("Deny", "/deny 3", ButtonStyle.DANGER))
    result = blocks(text, buttons)
    assert block_problems(result) == []
    assert [b["type"] for b in result] == ["section", "section", "actions", "actions"]
    values = [e["value"] for b in result if b["type"] == "actions" for e in b["elements"]]
    assert values == [b.command for b in buttons]
    assert blocks(text, []) == []


def test_reactions_have_slack_names() -> None:
    assert emoji_name("👀") == "eyes"
    assert emoji_name("👨‍💻") == "male-technologist"
    assert emoji_name(":tada:") == "tada"
    assert emoji_name("🦩") is None
