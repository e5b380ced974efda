"""The ``agent-broker`` command (also ``python -m broker``).

Subcommands: ``run``, ``check-config``, ``schedules``, ``status``, ``dashboard``,
``chat``, ``discord register-commands``.
Each loads the configuration first: ``--config PATH``, else ``./broker.toml``
when it exists, else the embedded default. A configuration problem in any
subcommand prints one message (no traceback) to stderr and exits with 78
(EX_CONFIG), which the systemd unit treats as "do not restart".

The working parts live in other modules and are imported only when their
subcommand runs, so ``check-config`` works on a machine where, say, the
dashboard's dependencies are missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import broker
from broker.config import (
    BrokerConfig,
    ConfigError,
    default_config,
    load_config,
    profile_key,
    resolve_command,
    server_url,
)

EX_OK = 0
EX_UNAVAILABLE = 69  # a part of the broker is not installed
EX_CONFIG = 78
DEFAULT_CONFIG_FILE = "broker.toml"


class Unavailable(Exception):
    """A subcommand's module or function is missing; the message says which."""


def load_cli_config(path: str | None) -> tuple[BrokerConfig, str]:
    """The configuration and a name for where it came from.

    ``path`` given: that file (missing is a ConfigError). Otherwise
    ``./broker.toml`` when present, else the embedded default ("<default>").
    """
    if path is not None:
        return load_config(path), path
    if os.path.isfile(DEFAULT_CONFIG_FILE):
        return load_config(DEFAULT_CONFIG_FILE), DEFAULT_CONFIG_FILE
    return default_config(), "<default>"


def agent_executable(config: BrokerConfig, source: str, profile: str | None = None) -> str:
    """What this machine must have for a profile's agent to start (default: the
    default profile's): its working directory and its command (resolved,
    returned). Either missing is a ConfigError naming ``source`` and the key."""
    name = profile or config.default_profile()
    agent = config.agent_profiles()[name]
    where = profile_key(config, name)
    if not os.path.isdir(agent.working_dir):
        raise ConfigError(f"{source}: {where}.working_dir: {agent.working_dir} is not a directory")
    if agent.workspace == "git-worktree" and _inside(agent.working_dir, agent.repo):
        raise ConfigError(
            f"{source}: {where}.working_dir: {agent.working_dir} is inside {where}.repo "
            f"({agent.repo}); the threads' worktrees would be files of the repository's own "
            "checkout: choose a directory outside it"
        )
    try:
        return resolve_command(agent.command, cwd=agent.working_dir)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {str(exc).replace('agent.', where + '.', 1)}") from None


def _inside(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or below it (symbolic links resolved)."""
    here, there = Path(path).resolve(), Path(directory).resolve()
    return here == there or there in here.parents


def summary(config: BrokerConfig, source: str) -> str:
    """One line saying what this configuration will run."""
    profiles = config.agent_profiles()
    lines = {
        name: " ".join([agent_executable(config, source, name), *a.args]) + f" in {a.working_dir}"
        for name, a in profiles.items()
    }
    if len(lines) == 1:
        agent = "agent: " + next(iter(lines.values()))
    else:
        agent = "agents: " + ", ".join(f"{name} ({line})" for name, line in lines.items())
    frontends = []
    if config.server.enabled:
        token = " (token set)" if config.server.token else ""
        frontends.append(f"server ws://{config.server.listen}/ws{token}")
    if config.gateway.url:
        frontends.append(f"gateway {config.redacted().gateway.url}")
    if config.discord.enabled:
        guilds = ", ".join(config.discord.allowed_guilds) or "all guilds"
        frontends.append(f"discord bot ({guilds})")
    return (
        f"{source}: ok; {agent}; "
        f"{', '.join(frontends) or 'no front-end'}; "
        f"pool: {config.pool.max_sessions} sessions; state: {config.state.path}"
    )


def _entry(module: str, function: str) -> Callable[..., int]:
    """``module.function``, or Unavailable when that module or function does not exist yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only the module itself missing is "not available"; a broken import inside it is a bug.
        if exc.name is None or not module.startswith(exc.name):
            raise
        raise Unavailable(f"{module} is not available yet") from None
    func = getattr(mod, function, None)
    if not callable(func):
        raise Unavailable(f"{module}.{function} is not available yet")
    return func  # type: ignore[no-any-return]


def _url(args: argparse.Namespace, config: BrokerConfig) -> str:
    url: str | None = args.url
    return url if url else server_url(config)


def cmd_check_config(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    print(summary(config, source))
    return EX_OK


def cmd_run(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    from broker.logs import setup_logging

    agent_executable(config, source)
    setup_logging(config.log, secrets=config.secret_values())
    config_path = None if source == "<default>" else source
    return _entry("broker.ops.service", "run")(config, config_path=config_path)


def cmd_status(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    if args.cluster:
        if not config.cluster.enabled:
            print(f"agent-broker: {source} has no [cluster] members", file=sys.stderr)
            return EX_CONFIG
        return _entry("broker.ops.cluster_view", "print_cluster")(config, args.json)
    return _entry("broker.ops.dashboard", "print_status")(_url(args, config), args.json)


def cmd_dashboard(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    return _entry("broker.ops.dashboard", "main")(_url(args, config))


def cmd_chat(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    return _entry("broker.ops.chat_client", "main")(
        _url(args, config), args.platform, args.thread, args.reconnect_secs
    )


def cmd_discord(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    """``discord register-commands``: the broker's commands as Discord application
    commands, in ``[discord] allowed_guilds`` (globally when empty)."""
    import trio

    from broker.frontends.discord.adapter import register_commands
    from broker.frontends.discord.rest import DiscordHTTPError, DiscordUnavailable, Rest

    settings = config.discord
    if not settings.token:
        raise ConfigError(f"{source}: discord.token: required to register commands")

    async def register() -> list[str]:
        rest = Rest(settings.api_base_url, settings.token)
        try:
            return await register_commands(rest, settings.allowed_guilds)
        finally:
            await rest.aclose()

    try:
        where = trio.run(register)
    except (DiscordHTTPError, DiscordUnavailable) as exc:
        _error(f"discord register-commands: {exc}")
        return EX_UNAVAILABLE
    print(f"registered the broker's commands: {', '.join(where)}")
    return EX_OK


def cmd_schedules(args: argparse.Namespace, config: BrokerConfig, source: str) -> int:
    from broker.chat.schedules import upcoming_text

    print(upcoming_text(config.schedules, time.time()))
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand's handler is in ``args.handler``."""
    parser = argparse.ArgumentParser(
        prog="agent-broker",
        description="Talk to ACP coding agents from chat: one supervised agent per thread.",
    )
    parser.add_argument("--version", action="version", version=f"agent-broker {broker.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="broker.toml to use (default: ./broker.toml if present, else the built-in default)",
    )
    url_help = "broker WebSocket URL (default: from [server] listen and token)"
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the broker in the foreground (the systemd unit runs this)")
    add("check-config", cmd_check_config, "validate the configuration and print a summary")
    p = add("status", cmd_status, "print the running broker's status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--url", help=url_help)
    p.add_argument(
        "--cluster",
        action="store_true",
        help="every [cluster] member's counts, and which are unreachable",
    )
    p = add("dashboard", cmd_dashboard, "live terminal dashboard of the running broker")
    p.add_argument("--url", help=url_help)
    add(
        "schedules",
        cmd_schedules,
        "list the [[schedules]] of the configuration and their next runs",
    )
    p = add("chat", cmd_chat, "chat with an agent through the running broker")
    p.add_argument("--url", help=url_help)
    p.add_argument("--platform", default="cli", help="platform name in thread keys (default: cli)")
    p.add_argument(
        "--thread", metavar="ID", help="continue this thread (its id is printed at start and exit)"
    )
    p.add_argument(
        "--reconnect-secs",
        type=float,
        default=300.0,
        metavar="SECS",
        help="how long to try reconnecting when the broker goes away (default: 300)",
    )
    p = add("discord", cmd_discord, "Discord tasks: register-commands")
    p.add_argument(
        "action",
        choices=["register-commands"],
        help="register /status, /cancel, ... as Discord application commands",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, BrokerConfig, str], int] = args.handler
    try:
        config, source = load_cli_config(args.config)
        return handler(args, config, source)
    except ConfigError as exc:
        _error(str(exc))
        return EX_CONFIG
    except Unavailable as exc:
        _error(f"{args.command}: {exc}")
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    print(f"agent-broker: {message}", file=sys.stderr)
