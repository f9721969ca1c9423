"""Connections are bounded before a request reaches the app, by the HTTP protocol of `python -m service`:

- the request line and headers: at most VQSERVE_MAX_HEADER_BYTES and VQSERVE_MAX_HEADERS fields, else 431,
  and however many bytes a client sends, the server never buffers more than the limit (a 200 MB header took
  about 400 MB of RSS before);
- their time: they must arrive within VQSERVE_HEADER_TIMEOUT_S, else 408 (a connection that sent nothing is
  closed without a reply), so idle and half-sent connections do not stay open;
- open connections: at most VQSERVE_MAX_CONNECTIONS; one more is answered 503 with Retry-After and closed.

A real `python -m service` on 127.0.0.1 and raw sockets; every wait is bounded."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.images import png
from tests.support.servers import Server
from tests.support.servers import serving_checkpoint as serve_process

pytestmark = pytest.mark.timeout(120)
MAX_HEADER_BYTES = 64 * 1024  # the defaults
MAX_HEADERS = 100
HEADER_TIMEOUT_S = 1.5
SLACK_S = 3.0  # scheduling on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tiny_64ch_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("connection-bounds")
    with serve_process(tiny_64ch_checkpoint, tmp, "--header-timeout-s", str(HEADER_TIMEOUT_S)) as running:
        yield running


def connect(server: Server) -> socket.socket:
    return socket.create_connection(server.host_port, timeout=10)


def read_reply(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closed its end (EOF or reset) within `timeout`, with nothing more sent."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(path: str = "/healthz", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra + b"\r\n"


def padded_head(size: int) -> bytes:
    """A GET /healthz whose request line and headers are exactly `size` bytes."""
    bare = get(extra=b"x-pad: \r\n")
    return get(extra=b"x-pad: " + b"a" * (size - len(bare)) + b"\r\n")


def assert_refused(sock: socket.socket, status: int, code: str) -> dict[str, str]:
    got, headers, body = read_reply(sock)
    assert got == status
    assert orjson.loads(body)["error"]["code"] == code
    assert headers["connection"] == "close"
    assert closed_by_server(sock, LINGER_BOUND_S)
    return headers


LINGER_BOUND_S = 5.0  # the server closes a refused connection after 1 s of dropping what still arrives


OVERSIZED = {
    "10000 headers": get(extra=b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))),
    "one 100 KB header": get(extra=b"x-big: " + b"a" * 100_000 + b"\r\n"),
    "a 100 KB request line": get("/healthz?pad=" + "a" * 100_000),
    "one field too many": get(extra=b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS))),  # + Host
    "one byte too many": padded_head(MAX_HEADER_BYTES + 1),
}


@pytest.mark.parametrize("head", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_oversized_heads_are_refused_431(server: Server, head: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(head)
        assert_refused(sock, 431, "headers_too_large")
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        padded_head(MAX_HEADER_BYTES),
        get(extra=b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS - 1))),  # + Host: exactly the limit
        get(extra=b"cookie: " + b"c" * 16_000 + b"\r\n"),
    ],
    ids=["exactly the byte limit", "exactly the field limit", "a 16 KB cookie"],
)
def test_heads_within_the_limits_are_served(server: Server, head: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(head)
        assert read_reply(sock)[0] == 200


def test_a_head_and_a_large_body_in_one_read_are_served(server: Server) -> None:
    """The head bound counts the head only, not the body bytes that arrive with it."""
    body = png(256, 256, seed=1)
    assert len(body) > 2 * MAX_HEADER_BYTES
    head = f"POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(head.encode() + body)
            assert read_reply(sock, timeout=60)[0] == 200


def test_the_bound_applies_to_every_request_of_a_kept_alive_connection(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(get())
        assert read_reply(sock)[0] == 200
        sock.sendall(OVERSIZED["one 100 KB header"])
        assert_refused(sock, 431, "headers_too_large")


def test_a_200_mb_header_is_refused_without_memory(server: Server) -> None:
    """The issue's figure: ~400 MB of RSS for one such connection. Now the parser holds at most the limit."""
    rss_before = server.rss_bytes()
    peak = [rss_before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    piece, sent, status = b"a" * (1 << 20), 0, None
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-huge: ")
            while sent < 200 << 20:
                try:
                    sock.sendall(piece)
                except OSError:  # reset once the server stopped reading: the reply is already waiting
                    break
                sent += len(piece)
                if select.select([sock], [], [], 0)[0]:
                    break
            status = read_reply(sock)[0]
    finally:
        done.set()
        sampler.join()
    print(  # noqa: T201 - figures for RELIABILITY.md (pytest -s)
        f"200 MB header: answered {status} after {sent >> 20} MiB sent; server RSS {rss_before / 2**20:.0f} MiB, "
        f"peak {peak[0] / 2**20:.0f} MiB"
    )
    assert status == 431
    assert sent < 64 << 20, "the server kept reading the header"
    assert peak[0] - rss_before < 16 << 20


def test_a_half_sent_head_is_answered_408_at_the_header_timeout(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-a: ")
        assert_refused(sock, 408, "header_timeout")
        assert HEADER_TIMEOUT_S - 0.1 <= time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S + LINGER_BOUND_S


def test_a_head_that_keeps_trickling_still_times_out(server: Server) -> None:
    """The timeout bounds the whole head, not the gap between its bytes (the slow-loris of the headers)."""
    head = OVERSIZED["one 100 KB header"][:200]
    with connect(server) as sock:
        started = time.monotonic()
        for byte in head:
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.1)[0] or time.monotonic() - started > HEADER_TIMEOUT_S + SLACK_S:
                break
        assert_refused(sock, 408, "header_timeout")
        assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S + LINGER_BOUND_S


def test_a_connection_that_sends_nothing_is_closed_without_a_reply(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert closed_by_server(sock, HEADER_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.1


def test_a_kept_alive_connection_gets_the_timeout_from_its_next_requests_first_byte(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(get())
        assert read_reply(sock)[0] == 200
        time.sleep(HEADER_TIMEOUT_S / 2)  # idle time between requests is the keep-alive timeout's (5 s)
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert_refused(sock, 408, "header_timeout")
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.1


def test_a_body_that_arrives_after_the_header_timeout_is_still_served(server: Server) -> None:
    """The header timeout ends with the headers: the body's own bound is VQSERVE_BODY_TIMEOUT_S (30 s)."""
    body = png(32, 32, seed=2)
    head = f"POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(head.encode() + body[:10])
        time.sleep(HEADER_TIMEOUT_S + 1.0)
        sock.sendall(body[10:])
        assert read_reply(sock, timeout=30)[0] == 200


def test_500_idle_and_200_half_sent_connections_are_all_closed(server: Server) -> None:
    """The issue's figures: 500 idle sockets and 200 half-sent heads stayed open indefinitely."""
    fds_before = server.fds()
    with ExitStack() as stack:
        idle = [stack.enter_context(connect(server)) for _ in range(500)]
        half = [stack.enter_context(connect(server)) for _ in range(200)]
        for sock in half:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-a: ")
        opened = time.monotonic()
        time.sleep(0.5)
        fds_open = server.fds()
        time.sleep(max(0.0, opened + HEADER_TIMEOUT_S + LINGER_BOUND_S - time.monotonic()))
        still_idle = sum(not closed_by_server(sock, 0.01) for sock in idle)
        answers = [read_reply(sock, timeout=5)[0] for sock in half]
        still_half = sum(not closed_by_server(sock, 0.01) for sock in half)
        fds_after = server.fds()
    print(  # noqa: T201 - figures for RELIABILITY.md (pytest -s)
        f"500 idle + 200 half-sent connections: server fds {fds_before} -> {fds_open} -> {fds_after} "
        f"{HEADER_TIMEOUT_S + LINGER_BOUND_S:.1f} s later; still open {still_idle} idle, {still_half} half-sent"
    )
    assert fds_open >= fds_before + 600, "the connections were not open to begin with"
    assert still_idle == 0
    assert still_half == 0
    assert answers == [408] * 200
    assert fds_after <= fds_before + 2
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


# the connection cap, on a server of its own
MAX_CONNECTIONS = 20


def test_connections_beyond_the_cap_are_refused_503_and_the_cap_holds(
    tiny_64ch_checkpoint: Path, tmp_path: Path
) -> None:
    with serve_process(tiny_64ch_checkpoint, tmp_path, "--max-connections", str(MAX_CONNECTIONS)) as capped:
        fds_before = capped.fds()
        refusals_before = capped.metric("vqserve_request_failures_total", reason="too_many_connections")
        with ExitStack() as stack:
            held = [stack.enter_context(connect(capped)) for _ in range(MAX_CONNECTIONS)]
            time.sleep(0.3)
            refused = []
            for _ in range(100):  # one more, a hundred times: each refused, none kept open
                with connect(capped) as extra:
                    extra.sendall(get())
                    refused.append(assert_refused(extra, 503, "too_many_connections"))
            fds_full = capped.fds()
            # a flood that never closes: at most 64 refused sockets linger (1 s each), the others close at once
            flood = [stack.enter_context(connect(capped)) for _ in range(150)]
            time.sleep(0.3)
            fds_flooded = capped.fds()
            assert [read_reply(sock)[0] for sock in flood] == [503] * 150  # each answered, then its end shut
            assert all(closed_by_server(sock, 1.0) for sock in flood)
            time.sleep(1.5)  # the lingering ones are closed too
            fds_lingered = capped.fds()
            # the held connections still work
            held[0].sendall(get())
            assert read_reply(held[0])[0] == 200
        assert all(headers.get("retry-after") == "1" for headers in refused)
        time.sleep(0.5)
        assert httpx.get(f"{capped.url}/healthz", timeout=10).status_code == 200  # room again
        refusals = capped.metric("vqserve_request_failures_total", reason="too_many_connections") - refusals_before
        print(  # noqa: T201 - figures for RELIABILITY.md (pytest -s)
            f"max_connections {MAX_CONNECTIONS}: {len(refused)} more connections answered 503; server fds "
            f"{fds_before} -> {fds_full} with {MAX_CONNECTIONS} held, {fds_flooded} while 150 more stayed connected"
        )
        assert refusals == 250
        assert fds_full <= fds_before + MAX_CONNECTIONS + 2
        assert fds_flooded <= fds_before + MAX_CONNECTIONS + 64 + 2
        assert fds_lingered <= fds_before + MAX_CONNECTIONS + 2
        assert "Traceback" not in capped.log_text()
