"""The broker as a service: the top-level nursery, signals, sd_notify, stop and reload.

:func:`serve` opens, in this order, the state store (``[state] path``), the
session pool with that store (which first stops agents a killed broker left
behind), the router, the WebSocket server (``[server] enabled``) with the
status routes, the gateway client (``[gateway] url`` set), the Discord
front-end (``[discord] enabled``) and the scheduler (``[[schedules]]``).
Replies that find no connection wait in a :class:`StoreOutbox`, so they
survive a restart.
Then it tells systemd ``READY=1`` and keeps ``STATUS=`` current
("3 sessions (1 busy), 2 suspended, 1 client"), pinging ``WATCHDOG=1`` when
the unit asks for it.

Stopping (SIGTERM, SIGINT, or :meth:`Broker.stop`) is graceful: ``STOPPING=1``,
``/healthz`` turns 503, new messages are answered "the broker is restarting"
by the pool, running turns are cancelled with their grace and end with their
partial text and that sentence, the router's final replies are written to
the sockets, every session is suspended into the store and every agent
stopped. The whole stop is bounded by a hard deadline on the service's cancel
scope (:func:`stop_budget`); a second signal cuts it short at once. Either way
the agents' process groups are still stopped (the supervisor's shielded stop).

SIGHUP rereads the configuration file and applies what can change without
dropping a session (see :func:`plan_reload`), the schedules among it; a bad
file is logged and the running configuration kept.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio
import trio.lowlevel

from broker import sentences
from broker.chat.commands import COMMANDS
from broker.chat.journal import EventJournal, tell_unfinished
from broker.chat.router import Router, ignore_reason
from broker.chat.scheduler import PlaceBook, Scheduler, ThreadNotOpened
from broker.cluster.forward import ClusterSink
from broker.config import BrokerConfig, ConfigError, load_config, profile_key
from broker.frontends.base import (
    Claim,
    FrontendError,
    InboundSink,
    Parcel,
    ReplyChannel,
    reply_thread,
)
from broker.frontends.discord.adapter import DiscordFrontend
from broker.frontends.gateway import GatewayClient
from broker.frontends.http import check_exposure, parse_listen
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.frontends.slack.adapter import SlackFrontend
from broker.frontends.wire import InboundEvent, OutboundReply, WireError, encode_reply, parse_reply
from broker.logs import RepeatLimiter, setup_logging
from broker.ops.status import StatusEndpoints
from broker.sessions.pool import Pool, open_pool, session_settings
from broker.store import Place, Store, StoreError, open_store
from supervisor.notify import Notifier, run_watchdog

log = logging.getLogger(__name__)

EX_OK = 0
EX_STOP_CUT_SHORT = 1  # a second signal or the hard deadline ended the stop
EX_UNAVAILABLE = 69  # a front-end could not start (port in use, ...)
EX_CONFIG = 78

#: Read when :func:`run` is not told the file, so SIGHUP can still reload it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_MARGIN_SECS = 5.0  # beyond cancel + stop grace: late replies, the store, sockets
REPLY_FLUSH_SECS = 3.0  # for the router to write the last replies after the pool closed
TAKEN_FLUSH_SECS = 1.0  # for the peers to take (acknowledge) the replies written last
STATUS_MIN_INTERVAL_SECS = 0.25  # at most 4 STATUS= updates a second
STATUS_REFRESH_SECS = 5.0  # client counts change without a pool change
OUTBOX_CAPACITY = 1000


def stop_budget(config: BrokerConfig) -> float:
    """Seconds a graceful stop may take before it is cut short: the turns'
    cancel grace, the agents' stop grace (all in parallel) and a margin."""
    timeouts = config.timeouts
    return timeouts.cancel_grace_secs + timeouts.stop_grace_secs + STOP_MARGIN_SECS


# -- reload: a pure decision ------------------------------------------------------


@attrs.frozen
class ReloadPlan:
    """What a reload applies (``config``) and what waits for a restart (``kept``)."""

    config: BrokerConfig
    kept: tuple[str, ...]
    changed: tuple[str, ...]  # the sections of the file that differ, e.g. ("router",)


def plan_reload(old: BrokerConfig, new: BrokerConfig) -> ReloadPlan:
    """Split a reloaded configuration into what applies now and what does not.

    The listen address, ``[server] enabled``, the gateway connection,
    ``[cluster]`` and the state file stay as they are (each named in ``kept``); everything else is
    taken from ``new``: router allowlists and rendering at once, pool limits
    and permissions through :meth:`Pool.update_config`, the log level, and the
    server token and frame limit for connections made from now on.
    """
    kept = []
    if new.server.listen != old.server.listen:
        kept.append(f"[server] listen stays {old.server.listen} until a restart")
    if new.server.enabled != old.server.enabled:
        kept.append("[server] enabled takes effect at the next restart")
    if (new.gateway.url, new.gateway.token) != (old.gateway.url, old.gateway.token):
        kept.append("[gateway] url and token take effect at the next restart")
    restart_only = ("enabled", "token", "api_base_url")
    if any(getattr(new.discord, k) != getattr(old.discord, k) for k in restart_only):
        kept.append("[discord] enabled, token and api_base_url take effect at the next restart")
    if new.slack != old.slack:
        kept.append("[slack] takes effect at the next restart")
    if new.cluster != old.cluster:
        kept.append("[cluster] takes effect at the next restart")
    if new.state.path != old.state.path:
        kept.append(f"[state] path stays {old.state.path} until a restart")
    applied = attrs.evolve(
        new,
        server=attrs.evolve(new.server, listen=old.server.listen, enabled=old.server.enabled),
        gateway=attrs.evolve(new.gateway, url=old.gateway.url, token=old.gateway.token),
        discord=attrs.evolve(
            new.discord,
            enabled=old.discord.enabled,
            token=old.discord.token,
            api_base_url=old.discord.api_base_url,
        ),
        slack=old.slack,
        cluster=old.cluster,
        state=old.state,
    )
    changed = tuple(
        field.name
        for field in attrs.fields(BrokerConfig)
        if getattr(old, field.name) != getattr(new, field.name)
    )
    return ReloadPlan(applied, tuple(kept), changed)


def check_usable(config: BrokerConfig, source: str) -> None:
    """Raise ConfigError (naming ``source``) when ``config`` cannot run here: a
    missing agent command or working directory, or a server reachable from
    other machines without a token."""
    for name, agent in config.agent_profiles().items():
        where = profile_key(config, name)
        if not os.path.isdir(agent.working_dir):
            raise ConfigError(
                f"{source}: {where}.working_dir: {agent.working_dir} is not a directory"
            )
        try:
            session_settings(config, profile=name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {str(exc).replace('agent.', where + '.', 1)}") from None
    if config.server.enabled:
        try:
            check_exposure(parse_listen(config.server.listen)[0], config.server.token)
        except FrontendError as exc:
            raise ConfigError(f"{source}: {exc}") from None


# -- the durable outbox -------------------------------------------------------------


class StoreOutbox:
    """A front-end's :class:`~broker.frontends.base.Outbox`, written through to the store.

    The transports call it synchronously, so the replies are held in memory
    and every one is also recorded in the store under ``destination``
    (``"server"`` / ``"gateway"``), with its row id as the parcel's ticket. A
    reply handed out for delivery stays in the store until a connection has
    taken it (:meth:`delivered`); one put back is in memory again. A broker
    that is killed meanwhile delivers it again after the restart: at least
    once, never lost. The store writes are batched by :meth:`keep`, one
    transaction for everything that changed meanwhile. Bounded: over
    ``capacity`` the oldest reply is dropped with a (rate-limited) warning.
    """

    def __init__(self, store: Store, destination: str, capacity: int = OUTBOX_CAPACITY) -> None:
        self.store = store
        self.destination = destination
        self.capacity = capacity
        self.dropped = 0
        self._parcels: collections.deque[Parcel] = collections.deque()
        self._with_request_id: set[int] = set()  # rows whose frame holds the request id
        self._added: list[tuple[int, str]] = []
        self._removed: list[int] = []
        self._dirty = trio.Event()
        self._closed = False
        self._full = RepeatLimiter(log)

    def __len__(self) -> int:
        return len(self._parcels)

    async def load(self) -> int:
        """Take in the replies a previous run left in the store; returns how many.
        A stored frame that cannot be read is logged and deleted."""
        for item in await self.store.outbox(self.destination):
            try:
                reply = parse_reply(item.frame)
                request_id, reply = reply.request_id, attrs.evolve(reply, request_id=None)
                self._parcels.append(Parcel(reply, item.id, request_id=request_id))
                if request_id is not None:
                    self._with_request_id.add(item.id)
            except WireError as exc:
                log.error(
                    "outbox %s: dropping unreadable reply %d: %s", self.destination, item.id, exc
                )
                self._forget(item.id)
        return len(self._parcels)

    def on_undeliverable(self, reply: OutboundReply) -> None:
        if len(self._parcels) >= self.capacity:
            lost = self._parcels.popleft()
            self.dropped += 1
            if lost.ticket is not None:
                self._forget(lost.ticket)
            self._full.warning(
                "outbox %s full (%d): dropped the oldest reply to %s",
                self.destination,
                self.capacity,
                reply_thread(lost.reply),
            )
        self._parcels.append(self._recorded(Parcel(reply)))

    def _recorded(self, parcel: Parcel) -> Parcel:
        """``parcel`` with a row in the store that holds its request id, if any
        (so a peer that took it before can tell it again after a restart)."""
        if parcel.ticket is not None and parcel.request_id is not None:
            if parcel.ticket in self._with_request_id:
                return parcel
            self._forget(parcel.ticket)  # stored before it had its request id
            parcel.ticket = None
        if parcel.ticket is None:
            parcel.ticket = self.store.new_outbox_id()
            frame = encode_reply(attrs.evolve(parcel.reply, request_id=parcel.request_id))
            self._added.append((parcel.ticket, frame))
            if parcel.request_id is not None:
                self._with_request_id.add(parcel.ticket)
            self._changed()
        return parcel

    def take(self, claim: Claim) -> list[Parcel]:
        taken = [p for p in self._parcels if claim.covers(p.reply)]
        if taken:
            self._parcels = collections.deque(p for p in self._parcels if not claim.covers(p.reply))
        return taken

    def delivered(self, parcels: Sequence[Parcel]) -> None:
        for parcel in parcels:
            if parcel.ticket is not None:
                self._forget(parcel.ticket)

    def put_back(self, parcels: Sequence[Parcel]) -> None:
        self._parcels.extendleft(reversed([self._recorded(p) for p in parcels]))

    def _forget(self, ticket: int) -> None:
        self._with_request_id.discard(ticket)
        self._removed.append(ticket)
        self._changed()

    def _changed(self) -> None:
        if self._closed:
            log.warning("outbox %s: closed; a change was not recorded", self.destination)
        self._dirty.set()

    def close(self) -> None:
        """No more changes; :meth:`keep` writes what is left and returns."""
        self._closed = True
        self._dirty.set()

    async def keep(self) -> None:
        """Write the changes to the store, batched, until :meth:`close`."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            added, self._added = self._added, []
            removed, self._removed = self._removed, []
            if added or removed:
                self.store.change_outbox(self.destination, added, removed)
            if self._closed:
                return
            await trio.lowlevel.checkpoint()  # let a burst of changes gather into one write


# -- events in flight -------------------------------------------------------------


class InFlight:
    """The router as the transports see it, counting the events being handled,
    so a stop can wait until the last replies have been written, and noting
    where each thread's messages come from (for scheduled runs)."""

    def __init__(self, sink: InboundSink, places: PlaceBook | None = None) -> None:
        self.sink = sink
        self.places = places
        self.running = 0
        self._idle = trio.Event()
        self._idle.set()

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        if self.places is not None:
            self.places.note(event, channel.frontend)
        if self.running == 0:
            self._idle = trio.Event()
        self.running += 1
        try:
            await self.sink.handle_event(event, channel)
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


# -- the running broker ---------------------------------------------------------------


class Lifecycle:
    """Stop requests and the hard deadline of one service run."""

    def __init__(self, config: BrokerConfig) -> None:
        self.budget = stop_budget(config)
        self.scope = trio.CancelScope()
        self.stop_requested = trio.Event()
        self.reason = ""

    @property
    def cut_short(self) -> bool:
        return self.scope.cancel_called

    def stop(self, reason: str = "requested") -> None:
        """First call: begin the graceful stop, due within the budget.
        Second call: stop now (agents are still stopped and reaped)."""
        if not self.stop_requested.is_set():
            self.reason = reason
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + self.budget)
            log.info("stopping (%s); at most %.1f s", reason, self.budget)
            self.stop_requested.set()
        elif not self.scope.cancel_called:
            log.warning("stopping now (%s during the stop)", reason)
            self.scope.cancel()


@attrs.define(eq=False)
class Broker:
    """One running broker, as ``await nursery.start(serve, config)`` returns it."""

    config: BrokerConfig
    config_path: str | None
    store: Store
    pool: Pool
    router: Router
    status: StatusEndpoints
    notifier: Notifier
    lifecycle: Lifecycle
    in_flight: InFlight
    outboxes: dict[str, StoreOutbox]
    scheduler: Scheduler
    server: WebSocketServer | None = None
    gateway: GatewayClient | None = None
    discord: DiscordFrontend | None = None
    slack: SlackFrontend | None = None
    cluster: ClusterSink | None = None
    reloads: int = 0

    def schedule_channel(self, platform: str, frontend: str | None) -> ReplyChannel | None:
        """Where a scheduled run's reply goes: the front-end of the thread's
        place, or (``frontend`` None) the server when a client serves the
        platform now, else the gateway, else the server's outbox."""
        if frontend == "discord" and self.discord is not None:
            return self.discord.channel
        if frontend == "slack" and self.slack is not None:
            return self.slack
        server, gateway = self.server, self.gateway
        if frontend is None and server is not None and server.serves(platform):
            return server.platform_channel("schedules")
        if frontend in (None, "gateway") and gateway is not None:
            return gateway.channel
        if frontend in (None, "server") and server is not None:
            return server.platform_channel("schedules")
        return None

    async def open_schedule_thread(self, platform: str, channel: str, text: str) -> Place | None:
        """The thread of a scheduled run on Discord or Slack, opened with
        ``text`` as its first message; None for platforms served by the server
        or the gateway. Raises ThreadNotOpened when the platform refuses."""
        if platform == "discord" and self.discord is not None:
            thread = await self.discord.open_thread(channel, text)
            if thread is None:
                raise ThreadNotOpened(sentences.schedule_platform_refused("Discord"))
            return Place("discord", platform, thread, thread)
        if platform == "slack" and self.slack is not None:
            thread = await self.slack.open_thread(channel, text)
            if thread is None:
                raise ThreadNotOpened(sentences.schedule_platform_refused("Slack"))
            return Place("slack", platform, channel, thread)
        return None

    def stop(self, reason: str = "requested") -> None:
        """Begin the graceful stop (as SIGTERM does); called again, stop at once."""
        self.lifecycle.stop(reason)

    def status_line(self) -> str:
        """``3 sessions (1 busy), 2 suspended, 1 client`` plus the gateway's state."""
        line = self.pool.snapshot().summary()
        if self.server is not None:
            clients = len(self.server.snapshot().connections)
            line += f", {clients} client{'' if clients == 1 else 's'}"
        if self.gateway is not None:
            line += ", gateway " + ("connected" if self.gateway.connected else "disconnected")
        if self.discord is not None:
            line += f", discord {self.discord.gateway.state.value}"
        if self.slack is not None:
            line += f", slack {self.slack.state}"
        return line

    def healthy(self) -> bool:
        """For the watchdog: the ping itself shows the event loop runs; a stop
        that overran its deadline is not healthy."""
        return not self.lifecycle.cut_short

    async def reload(self) -> bool:
        """Reread the configuration file and apply it (SIGHUP). False when there
        is no file or it is unusable; the running configuration then stays."""
        path = self.config_path
        if path is None:
            log.warning("reload: the broker was not started from a file; nothing to reload")
            return False
        self.notifier.notify(reloading=True, status=f"reloading {path}")
        try:
            new = await trio.to_thread.run_sync(load_config, path)
            check_usable(new, path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration:\n%s", exc)
            self.notifier.notify(ready=True, status=self.status_line())
            return False
        plan = plan_reload(self.config, new)
        self._apply(plan.config)
        self.reloads += 1
        changed = " ".join(f"[{name}]" for name in plan.changed) or "nothing"
        log.info("reloaded %s: %s changed", path, changed)
        for sentence in plan.kept:
            log.warning("reload: %s", sentence)
        self.notifier.notify(ready=True, status=self.status_line())
        return True

    def _apply(self, config: BrokerConfig) -> None:
        old, self.config = self.config, config
        for note in self.pool.update_config(config):
            log.info("reload: %s", note)
        self.router.update_config(config)
        if config.schedules != old.schedules:
            self.scheduler.update(config.schedules)
        if self.server is not None:
            self.server.settings = config.server  # token and frame limit: new connections
        if self.discord is not None:
            self.discord.configure(config.discord, config.router, config.prompt)
        if (config.log, config.secret_values()) != (old.log, old.secret_values()):
            setup_logging(config.log, secrets=config.secret_values())

    async def _report_status(self) -> None:
        """Keep systemd's STATUS= current, at most a few times a second."""
        last = ""
        while True:
            seen = self.pool.version
            line = self.status_line()
            if line != last and not self.lifecycle.stop_requested.is_set():
                self.notifier.notify(status=line)
                last = line
            with trio.move_on_after(STATUS_REFRESH_SECS):
                await self.pool.wait_changed(seen)
            await trio.sleep(STATUS_MIN_INTERVAL_SECS)

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if self.lifecycle.stop_requested.is_set():
                    log.info("SIGHUP during the stop: ignored")
                else:
                    await self.reload()
            else:
                self.stop(name)

    async def _close_pool(self) -> None:
        """The graceful part of a stop: tell systemd and ``/healthz``, then close
        the pool (turns end with the restart sentence, sessions are suspended
        into the store, agents stopped)."""
        self.notifier.notify(stopping=True, status=f"stopping: {self.status_line()}")
        self.status.closing = True
        await self.pool.aclose()

    async def _flush_replies(self) -> None:
        """Wait, bounded, for the router to write the replies of the turns the
        pool just ended; the front-ends are still up."""
        with trio.move_on_after(REPLY_FLUSH_SECS):
            await self.in_flight.wait_idle()
        if self.in_flight.running:
            log.warning("%d events still being answered at the stop", self.in_flight.running)
        # Replies written but not yet taken (an acknowledgement on its way): a
        # moment for them, so the next run does not send them again.
        with trio.move_on_after(TAKEN_FLUSH_SECS):
            if self.server is not None:
                await self.server.wait_taken()
            link = None if self.gateway is None else self.gateway.channel.link
            if link is not None:
                await link.wait_taken()
        log.info("stopped: %s", self.pool.snapshot().summary())


def discord_shard_of(config: BrokerConfig) -> tuple[int, int]:
    """``(shard_id, num_shards)`` of this replica's Discord connection: its
    ordinal in ``[cluster] members`` of the member count."""
    members = list(config.cluster.members)
    return members.index(config.cluster.replica), len(members)


async def _start_cluster(broker: Broker, nursery: trio.Nursery) -> None:
    """In a cluster, put the :class:`ClusterSink` between the transports and the
    router: events of threads another replica owns are forwarded to it."""
    cluster, router = broker.config.cluster, broker.router
    sink = ClusterSink(
        broker.router,
        replica=cluster.replica,
        members=cluster.members,
        peer_token=cluster.peer_token,
        ignored=lambda event: ignore_reason(event, router.config.router) is not None,
    )
    broker.cluster = await nursery.start(sink.run)
    broker.in_flight.sink = sink
    broker.status.cluster_snapshot = sink.snapshot
    log.info("replica %s of %d", cluster.replica, len(cluster.members))


async def _start_frontends(broker: Broker, nursery: trio.Nursery) -> None:
    config = broker.config
    if config.cluster.enabled:
        await _start_cluster(broker, nursery)
    if config.server.enabled:
        server: WebSocketServer = await nursery.start(
            functools.partial(
                serve_websocket,
                config.server,
                broker.in_flight,
                http_routes=broker.status.http_routes(),
                ws_routes=broker.status.ws_routes(),
                outbox=broker.outboxes["server"],
            )
        )
        broker.server = server
        broker.status.server_snapshot = server.snapshot
        if config.cluster.enabled:
            server.peer_token = config.cluster.peer_token
    if config.gateway.url:
        gateway = GatewayClient(config.gateway, broker.in_flight, outbox=broker.outboxes["gateway"])
        broker.gateway = await nursery.start(gateway.run)
        broker.status.gateway_snapshot = broker.gateway.snapshot
        log.info("dialing the gateway %s", config.redacted().gateway.url)
    if config.discord.enabled:
        discord = DiscordFrontend(
            config.discord,
            broker.in_flight,
            outbox=broker.outboxes["discord"],
            gateway_options={"shard": discord_shard_of(config)} if config.cluster.enabled else {},
        )
        discord.configure(config.discord, config.router, config.prompt)
        broker.discord = await nursery.start(discord.run)
        broker.status.discord_snapshot = discord.snapshot
        log.info("connecting to Discord (%s)", config.discord.api_base_url)
    if config.slack.enabled:
        slack = SlackFrontend(
            config.slack,
            broker.in_flight,
            outbox=broker.outboxes["slack"],
            commands=COMMANDS,
            max_file_bytes=config.prompt.max_attachment_bytes,
        )
        broker.slack = await nursery.start(slack.run)
        broker.status.slack_snapshot = slack.snapshot
        log.info("connecting to Slack (Socket Mode) at %s", config.slack.api_base_url)


@asynccontextmanager
async def _signals(enabled: bool) -> AsyncIterator[AsyncIterator[int] | None]:
    if not enabled:
        yield None
        return
    with trio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
        yield signals


async def serve(
    config: BrokerConfig,
    *,
    config_path: str | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the broker until it is stopped; returns the exit code.

    ``task_status.started(broker)`` once every front-end listens (the gateway
    client dials in the background). ``handle_signals`` (main thread only)
    makes SIGTERM/SIGINT stop and SIGHUP reload ``config_path``; embedders
    can call :meth:`Broker.stop` and :meth:`Broker.reload` instead.

    Returns 0 after a graceful stop, :data:`EX_STOP_CUT_SHORT` when a second
    stop request or the hard deadline ended it. Raises FrontendError or
    OSError when a front-end cannot start (after closing what was opened).
    """
    notifier = Notifier.from_environ()
    lifecycle = Lifecycle(config)
    started_at = time.time()
    async with _signals(handle_signals) as signals, trio.open_nursery() as top:
        with lifecycle.scope:
            async with (
                open_store(config.state.path, lock_wait=config.state.lock_wait_secs) as store,
                trio.open_nursery() as keepers,
            ):
                outboxes = {
                    name: StoreOutbox(store, name)
                    for name in ("server", "gateway", "discord", "slack")
                }
                for outbox in outboxes.values():
                    if waiting := await outbox.load():
                        log.info("%d replies wait in the %s outbox", waiting, outbox.destination)
                    keepers.start_soon(outbox.keep)
                journal = EventJournal(store, config.router.dedup_window_secs)
                tell_unfinished(journal, await journal.load(), outboxes)
                # The front-ends' nursery encloses the pool's, so they outlive the
                # pool's close and carry its last replies out.
                async with trio.open_nursery() as frontends:
                    async with open_pool(config, store=store) as pool:
                        places = PlaceBook(store)
                        await places.load()
                        scheduler = Scheduler(
                            config.schedules,
                            pool,
                            places=places,
                            channels=lambda platform, frontend: broker.schedule_channel(
                                platform, frontend
                            ),
                            threads=lambda platform, channel, text: broker.open_schedule_thread(
                                platform, channel, text
                            ),
                            store=store,
                        )
                        router = Router(pool, config, journal=journal, schedules=scheduler)
                        broker = Broker(
                            config,
                            config_path,
                            store,
                            pool,
                            router,
                            StatusEndpoints(
                                pool,
                                None,
                                started_at=started_at,
                                secrets=config.secret_values(),
                                store_snapshot=store.snapshot,
                                schedules=scheduler,
                            ),
                            notifier,
                            lifecycle,
                            InFlight(router, places),
                            outboxes,
                            scheduler,
                        )
                        if signals is not None:
                            top.start_soon(broker._watch_signals, signals)
                        await _start_frontends(broker, frontends)
                        await frontends.start(scheduler.run)
                        if notifier.enabled:
                            frontends.start_soon(broker._report_status)
                        frontends.start_soon(run_watchdog, notifier, broker.healthy)
                        notifier.notify(ready=True, status=broker.status_line())
                        log.info("ready: %s", broker.status_line())
                        task_status.started(broker)
                        await lifecycle.stop_requested.wait()
                        await broker._close_pool()
                    await broker._flush_replies()
                    frontends.cancel_scope.cancel()
                for outbox in outboxes.values():
                    outbox.close()
        top.cancel_scope.cancel()
    if lifecycle.cut_short:
        log.warning("the stop was cut short; every agent was still stopped")
        return EX_STOP_CUT_SHORT
    return EX_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run(config: BrokerConfig, *, config_path: str | None = None) -> int:
    """``agent-broker run``: serve until SIGTERM/SIGINT; returns the exit code.

    ``config_path`` is the file SIGHUP rereads (None: reloads keep the running
    config). A front-end that cannot start is one logged line and exit 78
    (a configuration problem) or 69 (e.g. the port is in use); a state store
    that cannot be opened exits with its :class:`~broker.store.StoreError`
    code (75 locked, 74 disk full, 73 read-only).
    """
    try:
        return trio.run(functools.partial(serve, config, config_path=config_path))
    except (FrontendError, OSError, StoreError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(leaf, FrontendError | OSError | StoreError) for leaf in leaves):
            raise
        for leaf in leaves:
            log.error("cannot start: %s", leaf)
        for leaf in leaves:
            if isinstance(leaf, StoreError):
                return leaf.exit_code
        return (
            EX_CONFIG if any(isinstance(leaf, FrontendError) for leaf in leaves) else EX_UNAVAILABLE
        )
