"""Route resolution and who may switch: pure functions over the config and the event."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from broker import sentences
from broker.chat.routes import RouteChoice, choose_route, switch_refusal
from broker.config import ConfigError, structure_config
from broker.frontends.wire import Channel, InboundEvent
from broker.testing.fake_gateway import make_event


def config_with(routes: list[dict[str, Any]], **agents: Any) -> Any:
    data = {
        "agent": {},
        "agents": {"claude": {}, "codex": {}, "review": {}, **agents},
        "routes": routes,
    }
    return structure_config(data, file="broker.toml", environ={})


def event(platform: str = "telegram", channel: str = "c1", user: str = "u1", **more: Any) -> Any:
    base = make_event("hi", platform=platform, channel_id=channel, sender_id=user)
    channel_value = attrs.evolve(base.channel, **more)
    result: InboundEvent = attrs.evolve(base, channel=channel_value)
    return result


def test_the_first_matching_route_chooses_and_no_match_is_the_default() -> None:
    config = config_with(
        [
            {"agent": "review", "platform": "discord", "user": "discord:boss"},
            {"agent": "claude", "platform": "discord", "guild": "g1"},
            {"agent": "codex", "channel": "slack:C9", "switch": False},
        ]
    )
    assert choose_route(config, event("discord", user="boss", guild_id="g1")) == RouteChoice(
        "review"
    )
    assert choose_route(config, event("discord", user="other", guild_id="g1")) == RouteChoice(
        "claude"
    )
    assert choose_route(config, event("slack", channel="C9")) == RouteChoice("codex", False)
    assert choose_route(config, event("telegram", channel="C9")) == RouteChoice("default")
    assert choose_route(config, event("discord", guild_id="g2")) == RouteChoice("default")
    # a thread under a routed channel is routed with it
    threaded = event("slack", channel="C9", thread_id="C9:1.2")
    assert choose_route(config, threaded).profile == "codex"


def test_switching_is_refused_when_never_pinned_or_not_an_approver() -> None:
    config = config_with([])
    anyone = event()
    assert switch_refusal(config, RouteChoice("default"), anyone) is None
    assert switch_refusal(config, RouteChoice("codex", False), anyone) == (
        sentences.AGENT_SWITCH_PINNED
    )
    never = attrs.evolve(config, agents=attrs.evolve(config.agents, switching="never"))
    assert switch_refusal(never, RouteChoice("default"), anyone) == sentences.AGENT_SWITCH_NEVER
    approvers = attrs.evolve(
        config,
        agents=attrs.evolve(config.agents, switching="approvers"),
        permissions=attrs.evolve(config.permissions, approvers=("telegram:boss",)),
    )
    assert switch_refusal(approvers, RouteChoice("default"), anyone) == (
        sentences.AGENT_SWITCH_APPROVERS
    )
    assert switch_refusal(approvers, RouteChoice("default"), event(user="boss")) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"routes": [{"agent": "nobody"}]},
            'routes[0].agent: expected the name of a profile (default), got "nobody"',
        ),
        ({"routes": [{"platform": "discord"}]}, 'routes[0].agent: expected a profile name, got ""'),
        ({"routes": [{"agent": "default", "chanel": "1"}]}, "routes[0].chanel: unknown key"),
        (
            {"agents": {"claude": {"comand": "x"}}, "agent": {}},
            "agents.claude.comand: unknown key",
        ),
        (
            {"agents": {"claude": {}}},
            'agents.default: expected the name of a profile (claude), got "default"',
        ),
        (
            {"agents": {"default": {}}, "agent": {}},
            "agents.default: written twice: [agent] is the profile default; keep one of them",
        ),
        (
            {"agents": {"default": "w", "w": {"workspace": "git-worktree"}}},
            'agents.w.repo: required when workspace = "git-worktree"',
        ),
        (
            {"agents": {"default": "w", "w": {"workspace": "per-thread", "warm_spares": 1}}},
            'agents.w.warm_spares: expected 0 when workspace is not "shared"',
        ),
        (
            {"agents": {"default": "w", "w": {"workspace": "elsewhere"}}},
            "agents.w.workspace: expected one of shared | per-thread | git-worktree, "
            'got "elsewhere"',
        ),
        (
            {"agents": {"default": "w", "w": {"mcp_servers": {"gh": {"type": "http"}}}}},
            'agents.w.mcp_servers.gh.url: an http:// or https:// URL is required for type "http"',
        ),
        (
            {"agents": {"default": "w", "w": {"mcp_servers": {"gh": {"bogus": 1}}}}},
            "agents.w.mcp_servers.gh.bogus: unknown key",
        ),
        (
            {"agents": {"default": "w", "w": {"permissions_by_kind": {"edits": "reject"}}}},
            "agents.w.permissions_by_kind.edits: expected an ACP tool kind",
        ),
        (
            {"pool": {"max_sessions": 2}, "agent": {"max_sessions": 3}},
            "agent.max_sessions: expected an integer <= pool.max_sessions (2), got 3",
        ),
        (
            {
                "server": {"token": "s3cret-token"},
                "agent": {"mcp_servers": {"gh": {"command": "x", "env": {"T": "s3cret-token"}}}},
            },
            "agent.mcp_servers.gh: holds one of the broker's tokens",
        ),
    ],
)
def test_a_bad_profile_route_or_mcp_server_is_an_error_naming_its_key(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        structure_config(data, file="broker.toml", environ={})
    assert f"broker.toml: {message}" in str(caught.value)


def test_agent_alone_is_the_default_profile_and_named_ones_join_it() -> None:
    alone = structure_config({"agent": {"command": "python"}}, file="b", environ={})
    assert list(alone.agent_profiles()) == ["default"]
    both = structure_config(
        {"agent": {}, "agents": {"default": "claude", "claude": {"args": ["--acp"]}}},
        file="b",
        environ={},
    )
    assert list(both.agent_profiles()) == ["default", "claude"]
    assert both.default_profile() == "claude"
    assert both.agent_profiles()["claude"].args == ("--acp",)


def test_mcp_server_values_are_expanded_like_env_and_hidden_when_shown() -> None:
    data = {
        "agent": {
            "mcp_servers": {
                "github": {
                    "type": "http",
                    "url": "https://api.githubcopilot.com/mcp/",
                    "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}"},
                }
            }
        }
    }
    config = structure_config(data, file="b", environ={"GITHUB_TOKEN": "ghp_x"})
    server = config.agent.mcp_servers["github"]
    assert server.headers == {"Authorization": "Bearer ghp_x"}
    assert config.redacted().agent.mcp_servers["github"].headers == {"Authorization": "***"}


def test_channel_guild_is_left_out_of_protocol_frames_when_unknown() -> None:
    from broker.frontends.wire import encode_event

    assert '"guild_id"' not in encode_event(make_event("hi"))
    assert Channel("c", "group").guild_id is None
