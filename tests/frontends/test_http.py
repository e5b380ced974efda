"""Listen addresses, exposure rule, request heads and tokens of the server port."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker.frontends.base import FrontendError
from broker.frontends.http import (
    BadRequest,
    check_exposure,
    parse_head,
    parse_listen,
    read_head,
    token_status,
)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:9", ("localhost", 9)),
    ],
)
def test_listen_address_is_split_into_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8765", ":8765", "host:", "host:http", "h:70000"])
def test_malformed_listen_address_names_the_key(listen: str) -> None:
    with pytest.raises(FrontendError, match=r"^\[server\] listen = "):
        parse_listen(listen)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.5.5", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    check_exposure(host, "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.internal"])
def test_anything_beyond_loopback_needs_a_token(host: str) -> None:
    with pytest.raises(FrontendError, match="set a token"):
        check_exposure(host, "")
    check_exposure(host, "T")


def test_request_head_gives_path_query_and_lower_case_headers() -> None:
    head = b"GET /ws?token=a%20b&platforms=x HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n\r\n"
    request = parse_head(head)
    assert request.path == "/ws" and request.query_value("token") == "a b"
    assert request.is_websocket and request.headers["host"] == "h"


def test_malformed_request_line_is_a_400() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(b"HELLO\r\n\r\n")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "header", "status"),
    [
        ("/s", "", 401),
        ("/s?token=T", "", None),
        ("/s?token=X", "", 403),
        ("/s", "Authorization: Bearer T\r\n", None),
        ("/s", "authorization: bearer T\r\n", None),
        ("/s", "Authorization: Bearer X\r\n", 403),
        ("/s", "Authorization: Basic VDpU\r\n", 401),
    ],
)
def test_token_from_query_or_bearer_header(target: str, header: str, status: int | None) -> None:
    request = parse_head(f"GET {target} HTTP/1.1\r\n{header}\r\n".encode())
    assert token_status(request, "T") == status
    assert token_status(request, "") is None


@pytest.mark.parametrize(("size", "status"), [(16 * 1024, None), (17 * 1024, 431)])
async def test_the_head_limit_counts_the_bytes_read(size: int, status: int | None) -> None:
    sending, receiving = trio.testing.memory_stream_one_way_pair()
    head = b"GET / HTTP/1.1\r\nX-Pad: "
    head += b"a" * (size - len(head) - 4) + b"\r\n\r\n"
    await sending.send_all(head + b"after")
    if status is None:
        assert (await read_head(receiving))[0] == head
        return
    with pytest.raises(BadRequest) as caught:
        await read_head(receiving)
    assert caught.value.status == status
