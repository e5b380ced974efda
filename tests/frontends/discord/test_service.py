"""[discord] in the config, the service, /status, the dashboard and the CLI."""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

import attrs
import pytest
import trio

from broker.config import ConfigError, LogConfig, agent_environment, structure_config
from broker.frontends.discord.adapter import DiscordSnapshot
from broker.logs import setup_logging
from broker.ops import cli, dashboard
from broker.ops.service import Broker, check_usable, plan_reload, serve
from broker.ops.status import metrics_text, status_document
from broker.testing.fake_discord import ALICE, GUILD_ID, fake_discord
from broker.testing.harness import fake_agent_config, toml_text
from tests.status.samples import pool_snapshot

from .harness import WAIT_SECS, wait_until


def test_enabled_without_a_token_is_refused_with_what_to_set() -> None:
    with pytest.raises(ConfigError) as err:
        structure_config({"discord": {"enabled": True}}, file="broker.toml")
    assert str(err.value).startswith("broker.toml: discord.token: required when [discord] enabled")


def test_bad_discord_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"discord.allowed_guilds\[0\]: expected a guild id"):
        structure_config({"discord": {"allowed_guilds": ["general"]}})
    with pytest.raises(ConfigError, match=r"discord\.api_base_url: expected an http"):
        structure_config({"discord": {"api_base_url": "discord.com"}})


def test_discord_alone_without_the_server_is_a_valid_broker(tmp_path: Path) -> None:
    config = fake_agent_config(
        tmp_path, server={"enabled": False}, discord={"enabled": True, "token": "T0KEN-abc"}
    )
    check_usable(config, "broker.toml")
    assert "discord bot (all guilds)" in cli.summary(config, "broker.toml")


def test_the_discord_token_is_a_secret_masked_everywhere_and_kept_from_agents() -> None:
    config = structure_config({"discord": {"enabled": True, "token": "T0KEN-abc"}})
    assert "T0KEN-abc" in config.secret_values()
    assert config.redacted().discord.token == "***"
    env = agent_environment(
        attrs.evolve(config.agent, inherit_env=("LEAK",)),
        {"LEAK": "Bot T0KEN-abc", "PATH": "/bin"},
        secrets=config.secret_values(),
    )
    assert "LEAK" not in env
    with pytest.raises(ConfigError, match=r"agent\.args"):
        structure_config(
            {"discord": {"token": "T0KEN-abc"}, "agent": {"args": ["--token=T0KEN-abc"]}}
        )


def test_reload_applies_the_filters_but_keeps_the_connection() -> None:
    old = structure_config({"discord": {"enabled": True, "token": "a"}})
    new = structure_config(
        {
            "discord": {
                "enabled": True,
                "token": "b",
                "allowed_guilds": ["1"],
                "mention_required": False,
            }
        }
    )
    plan = plan_reload(old, new)
    assert plan.config.discord.token == "a"
    assert plan.config.discord.allowed_guilds == ("1",)
    assert plan.config.discord.mention_required is False
    assert "[discord] enabled, token and api_base_url take effect at the next restart" in plan.kept


def _snapshot(**changes: object) -> DiscordSnapshot:
    values: dict[str, object] = dict(
        state="ready",
        fatal="",
        connected=True,
        bot="agent-broker",
        connects=1,
        identifies=1,
        resumes=0,
        zombies=0,
        events_received=3,
        replies_sent=3,
        edits_superseded=0,
        rate_limited=0,
        heartbeat_lateness_secs=0.01,
        outbox_waiting=0,
        last_error="",
    )
    values.update(changes)
    return DiscordSnapshot(**values)  # type: ignore[arg-type]


def test_status_and_the_dashboard_show_a_fatal_close_reason() -> None:
    reason = "closed with 4014: disallowed intents: enable the Message Content intent"
    fatal = _snapshot(state="stopped", connected=False, fatal=reason)
    doc = status_document(pool_snapshot(), None, now=10.0, started_at=0.0, discord=fatal)
    assert doc["frontends"]["discord"]["fatal"] == reason
    assert f"stopped: {reason}" in dashboard.frontends(doc).plain
    text = metrics_text(pool_snapshot(), None, now=1.0, started_at=0.0, discord=fatal)
    assert "agent_broker_discord_connected 0" in text
    assert 'agent_broker_events_received_total{frontend="discord"} 3' in text


async def test_the_service_runs_discord_alone_and_answers_a_dm_through_an_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake_discord() as fake:
        config = fake_agent_config(
            tmp_path,
            server={"enabled": False},
            discord={"enabled": True, "token": fake.token, "api_base_url": fake.api_base_url},
            render={"edit_interval_ms": 50},
        )
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            assert broker.server is None and broker.discord is not None
            with trio.fail_after(WAIT_SECS):
                await broker.discord.gateway.wait_ready()
            dm = fake.add_dm(ALICE)
            await fake.post_message(dm, "@reply all good\n@chunks 3")
            await wait_until(
                fake, lambda: [m["content"] for m in fake.bot_messages(dm)] == ["all good"]
            )
            doc = broker.status.document()
            assert doc["frontends"]["discord"]["state"] == "ready"
            assert doc["sessions"][0]["thread_key"] == f"discord:{dm}"
            assert "discord ready" in broker.status_line()
            broker.stop()
    fake.assert_clean()
    assert fake.token not in caplog.text


async def test_register_commands_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_discord() as fake:
        path = tmp_path / "broker.toml"
        path.write_text(
            toml_text(
                {
                    "discord": {
                        "token": fake.token,
                        "api_base_url": fake.api_base_url,
                        "allowed_guilds": [GUILD_ID],
                    }
                }
            )
        )
        argv = ["discord", "register-commands", "--config", str(path)]
        with trio.fail_after(WAIT_SECS):
            code = await trio.to_thread.run_sync(cli.main, argv)
        assert code == 0
        assert fake.commands[GUILD_ID][0]["name"] == "status"
        assert f"guild {GUILD_ID}" in capsys.readouterr().out
        assert fake.requests_to("GET", "/applications/@me")


def test_request_urls_with_interaction_tokens_stay_out_of_the_log() -> None:
    handler = setup_logging(LogConfig(level="debug"), io.StringIO())
    try:
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().removeHandler(handler)
