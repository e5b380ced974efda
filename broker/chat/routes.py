"""Which agent profile a thread gets: ``[[routes]]`` rules over the inbound event.

Pure and synchronous. A rule matches when every key it sets matches the
event (an empty key matches anything): ``platform``; ``channel`` (the
channel's id, or its thread's, as ``id`` or ``platform:id``); ``guild`` (the
Discord guild or Slack team); ``user`` (the sender, ``id`` or
``platform:id``). The first matching rule wins; no match is the default
profile, and ``/agent NAME`` may switch it then.

Who may switch (:func:`switch_refusal`): ``[agents] switching`` (anyone,
approvers, never) and the matching rule's ``switch``.
"""

from __future__ import annotations

import attrs

from broker import sentences
from broker.config import BrokerConfig, RouteConfig
from broker.frontends.wire import InboundEvent

__all__ = ["RouteChoice", "choose_route", "route_matches", "switch_refusal"]


@attrs.frozen
class RouteChoice:
    """The routes' answer for an event: the profile, and whether ``/agent`` may change it."""

    profile: str
    switchable: bool = True


def _same(entry: str, platform: str, value: str | None) -> bool:
    return value is not None and entry in (value, f"{platform}:{value}")


def route_matches(route: RouteConfig, event: InboundEvent) -> bool:
    """Whether every key ``route`` sets matches ``event``."""
    platform, channel = event.platform, event.channel
    checks = (
        not route.platform or route.platform == platform,
        not route.channel
        or _same(route.channel, platform, channel.id)
        or _same(route.channel, platform, channel.thread_id),
        not route.guild or _same(route.guild, platform, channel.guild_id),
        not route.user or _same(route.user, platform, event.sender.id),
    )
    return all(checks)


def choose_route(config: BrokerConfig, event: InboundEvent) -> RouteChoice:
    """The profile of ``event``'s thread by the routes (first match), else the default."""
    for route in config.routes:
        if route_matches(route, event):
            return RouteChoice(route.agent, route.switch)
    return RouteChoice(config.default_profile())


def switch_refusal(config: BrokerConfig, choice: RouteChoice, event: InboundEvent) -> str | None:
    """Why the sender of ``event`` may not switch its thread's agent, or None."""
    if config.agents.switching == "never":
        return sentences.AGENT_SWITCH_NEVER
    if not choice.switchable:
        return sentences.AGENT_SWITCH_PINNED
    if config.agents.switching == "approvers":
        sender, platform = event.sender, event.platform
        if sender.is_bot or not any(
            _same(entry, platform, sender.id) for entry in config.permissions.approvers
        ):
            return sentences.AGENT_SWITCH_APPROVERS
    return None
