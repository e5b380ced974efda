"""Socket Mode against the fake Slack: hello, acks, refreshes, failures."""

from __future__ import annotations

import pytest
import trio

from broker.frontends.slack.socket import (
    Disconnect,
    Envelope,
    Hello,
    Other,
    SocketModeError,
    ack,
    parse_message,
)
from tests.frontends.slack.stack import Recorder, running_slack, wait_connected


def test_socket_mode_messages_are_read_by_type() -> None:
    assert parse_message('{"type":"hello","num_connections":2}') == Hello(2)
    assert parse_message('{"type":"disconnect","reason":"warning"}') == Disconnect("warning")
    envelope = parse_message(
        '{"envelope_id":"e1","type":"events_api","payload":{"a":1},"retry_attempt":2,'
        '"retry_reason":"timeout","accepts_response_payload":false}'
    )
    assert envelope == Envelope("e1", "events_api", {"a": 1}, 2, "timeout")
    assert parse_message('{"type":"something_new"}') == Other("something_new")
    with pytest.raises(SocketModeError, match="not JSON"):
        parse_message("{")
    assert ack("e1") == '{"envelope_id": "e1"}'


async def test_every_envelope_is_acked_at_once_while_its_handling_waits() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            held = [
                await fake.send_event(fake.user_message("hold", mention=True)) for _ in range(5)
            ]
            for delivery in held:
                await fake.wait_acked(delivery.envelope_id)
            await sink.wait_events(5)
            assert not fake.bot_messages("C0CHAN")  # acked, not yet answered
            sink.release.set()
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 5)
        fake.assert_clean()


async def test_disconnect_opens_a_new_connection_first_and_loses_no_event() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake, socket = stack.fake, stack.frontend.socket
        with trio.fail_after(10):
            await wait_connected(stack)
            old = await fake.disconnect("refresh_requested", close_after=5.0)
            right_after = await fake.send_event(fake.user_message("in between", mention=True))
            await fake.wait_for(lambda: fake.connections_opened == 2)
            await fake.wait_for(lambda: fake.open_sockets == 1)  # the client closed the old one
            on_new = await fake.send_event(fake.user_message("on the new one", mention=True))
            await sink.wait_events(2)
            await fake.wait_acked(right_after.envelope_id)
            await fake.wait_acked(on_new.envelope_id)
        assert right_after.connection == old == 1
        assert on_new.connection == 2
        assert socket.refreshes == 1
        assert socket.connects == 2
        assert [e.content.text for e in sink.events] == ["in between", "on the new one"]
        fake.assert_clean()


async def test_dropped_connection_is_redialled() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            await fake.set_down(True)
            await fake.wait_for(lambda: len(fake.calls_to("apps.connections.open")) >= 3)
            assert stack.frontend.state == "reconnecting"
            await fake.set_down(False)
            await fake.wait_for(lambda: fake.open_sockets == 1)
            await fake.send_event(fake.user_message("back", mention=True))
            await sink.wait_events(1)
        assert stack.frontend.socket.connects == 2


async def test_invalid_app_token_stops_socket_mode_for_good() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            await wait_connected(stack)
            fake.auth_error = "invalid_auth"
            await fake.set_down(True)  # drop the socket; the next open is refused
            fake.down = False
            while not frontend.fatal:
                await frontend.wait_changed()
        # fatal is set only once SocketMode.run has returned: nothing dials again
        assert fake.calls_to("apps.connections.open")[-1].error == "invalid_auth"
        assert not frontend.socket.connected
        assert frontend.snapshot().state == "stopped"
        assert frontend.snapshot().fatal == "invalid_auth (check [slack] app_token)"
