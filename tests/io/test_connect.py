"""Opening connections: every address, raced as RFC 8305 says; aborts; the destination policy.

A "blackhole" here is a real listening socket whose accept queue is full: the kernel drops
further SYNs, so a connect to it hangs as one to a filtered address does.  Names resolve
where a test wants through :data:`segdl.io.connect.getaddrinfo`, which the tests replace.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import segdl.io.connect as connect_module
from segdl.core.destinations import DestinationPolicy
from segdl.core.proxyrules import ProxySettings
from segdl.errors import DestinationRefused, NetworkError, ProxyError, Timeout
from segdl.io.connect import AbortSignal, Address, Connector, interleave_families

PUBLIC_SERVER = DestinationPolicy(allow_internal=False)
LOOPBACK_SERVER = DestinationPolicy(allow_internal=True)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def blackhole(family: int, host: str, port: int = 0) -> Iterator[int]:
    """A listener at host:port that never completes another handshake; yields its port."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        bound = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, bound))
        time.sleep(0.1)
        yield bound
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def listening(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A listener that accepts (the kernel completes handshakes up to its backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(64)
        yield listener


def resolver(table: dict[str, list[Address]]) -> Callable[..., list[tuple[Any, ...]]]:
    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (family, socket.SOCK_STREAM, 6, "", (sockaddr[0], port, *sockaddr[2:]))
            for family, sockaddr in table[host]
        ]

    return getaddrinfo


V6 = socket.AF_INET6
V4 = socket.AF_INET


# ---- the order of attempts (RFC 8305 §4)

addresses = st.lists(
    st.tuples(
        st.sampled_from([V4, V6]),
        st.integers(min_value=0, max_value=999).map(lambda n: (f"10.0.{n // 256}.{n % 256}", 80)),
    ),
    unique=True,
    max_size=12,
)


@given(found=addresses)
def test_families_alternate_from_the_resolvers_first_choice(found: list[Address]) -> None:
    order = interleave_families(found)
    assert sorted(order) == sorted(found)
    if not found:
        return
    assert order[0] == found[0]
    for family in (V4, V6):
        # Within one family, the resolver's order is kept.
        assert [a for a in order if a[0] == family] == [a for a in found if a[0] == family]
    counts = {V4: sum(a[0] == V4 for a in found), V6: sum(a[0] == V6 for a in found)}
    both = 2 * min(counts.values())
    families = [a[0] for a in order[:both]]
    assert all(families[i] != families[i + 1] for i in range(len(families) - 1))


# ---- racing


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_blackholed_ipv6_address_first_costs_one_attempt_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with listening("127.0.0.1") as good:
        port = good.getsockname()[1]
        with blackhole(V6, "::1", port):
            monkeypatch.setattr(
                connect_module,
                "getaddrinfo",
                resolver({"dual.test": [(V6, ("::1", 0, 0, 0)), (V4, ("127.0.0.1", 0))]}),
            )
            opened = Connector().open("http", "dual.test", port, timeout=30)
            with opened.sock:
                assert opened.sock.getpeername() == ("127.0.0.1", port)
                assert opened.sock.gettimeout() is None  # blocking, as the data plane wants


def test_a_blackholed_ipv4_address_first_then_a_working_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with listening("127.0.0.1") as good:
        port = good.getsockname()[1]
        with blackhole(V4, "127.0.0.2", port):
            monkeypatch.setattr(
                connect_module,
                "getaddrinfo",
                resolver({"two.test": [(V4, ("127.0.0.2", 0)), (V4, ("127.0.0.1", 0))]}),
            )
            started = time.monotonic()
            opened = Connector().open("http", "two.test", port, timeout=30)
            took = time.monotonic() - started
            with opened.sock:
                assert opened.sock.getpeername() == ("127.0.0.1", port)
            # Not a speed target: without the race the connect waits out its 30 s timeout.
            assert took < 15


def test_a_refused_address_starts_the_next_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening("127.0.0.1") as good:
        port = good.getsockname()[1]
        monkeypatch.setattr(
            connect_module,
            "getaddrinfo",
            resolver({"x.test": [(V4, ("127.0.0.3", 0)), (V4, ("127.0.0.1", 0))]}),
        )
        # 127.0.0.3:port refuses (nothing listens there), then 127.0.0.1 answers.
        opened = Connector().open("http", "x.test", port, timeout=30)
        with opened.sock:
            assert opened.sock.getpeername()[0] == "127.0.0.1"


def test_when_every_address_fails_the_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening() as gone:
        port = gone.getsockname()[1]
    monkeypatch.setattr(
        connect_module,
        "getaddrinfo",
        resolver({"down.test": [(V4, ("127.0.0.1", 0)), (V4, ("127.0.0.5", 0))]}),
    )
    with pytest.raises(NetworkError, match=rf"^cannot connect to down\.test:{port}: ") as caught:
        Connector().open("http", "down.test", port, timeout=10)
    assert "refused" in str(caught.value).lower()
    assert caught.value.exit_code == 6


def test_an_unknown_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connect_module, "getaddrinfo", resolver({}))
    with pytest.raises(NetworkError, match=r"^cannot resolve nowhere\.test: "):
        Connector().open("https", "nowhere.test", 443, timeout=5)


def test_the_connect_timeout_covers_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    with blackhole(V4, "127.0.0.1") as port:
        monkeypatch.setattr(
            connect_module, "getaddrinfo", resolver({"slow.test": [(V4, ("127.0.0.1", 0))]})
        )
        with pytest.raises(Timeout, match=rf"^connect timeout to slow\.test:{port}$"):
            Connector().open("http", "slow.test", port, timeout=0.5)


def test_an_abort_from_another_thread_ends_the_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    with blackhole(V4, "127.0.0.1") as port:
        monkeypatch.setattr(
            connect_module, "getaddrinfo", resolver({"hang.test": [(V4, ("127.0.0.1", 0))]})
        )
        signal = AbortSignal()
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                Connector().open("http", "hang.test", port, timeout=60, signal=signal)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.3)
        signal.abort()
        thread.join(10)
        assert not thread.is_alive(), "the connect ignored the abort"
        assert len(outcome) == 1
        assert str(outcome[0]) == "connection aborted"


# ---- the destination policy at the connector


def test_a_name_resolving_to_the_metadata_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        connect_module, "getaddrinfo", resolver({"evil.test": [(V4, ("169.254.169.254", 0))]})
    )
    for policy in (LOOPBACK_SERVER, PUBLIC_SERVER):
        with pytest.raises(DestinationRefused) as caught:
            Connector(policy=policy).open("http", "evil.test", 80, timeout=5)
        assert str(caught.value) == (
            "refused to download from evil.test (169.254.169.254): a cloud metadata address is "
            "never fetched"
        )


def test_metadata_names_are_refused_before_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(*args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        raise AssertionError("looked up")

    monkeypatch.setattr(connect_module, "getaddrinfo", no_lookup)
    with pytest.raises(DestinationRefused, match=r"metadata\.google\.internal"):
        Connector(policy=LOOPBACK_SERVER).open("http", "metadata.google.internal", 80, timeout=5)


def test_refused_addresses_are_skipped_and_allowed_ones_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with listening("127.0.0.1") as good:
        port = good.getsockname()[1]
        monkeypatch.setattr(
            connect_module,
            "getaddrinfo",
            resolver({"mixed.test": [(V4, ("169.254.169.254", 0)), (V4, ("127.0.0.1", 0))]}),
        )
        opened = Connector(policy=LOOPBACK_SERVER).open("http", "mixed.test", port, timeout=5)
        with opened.sock:
            assert opened.sock.getpeername()[0] == "127.0.0.1"
        with pytest.raises(DestinationRefused, match=r"^refused to download from mixed\.test "):
            Connector(policy=PUBLIC_SERVER).open("http", "mixed.test", port, timeout=5)


@contextlib.contextmanager
def answering(reply: bytes | None) -> Iterator[int]:
    """A one-connection "proxy" that reads what it is sent, then answers *reply* and closes
    (None: says nothing and keeps the connection open); yields its port."""
    with listening() as listener:
        done = threading.Event()

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    if reply is not None:
                        conn.sendall(reply)
                        return
                done.wait(5)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            done.set()
            thread.join(5)


def through(proxy: str) -> Connector:
    return Connector(ProxySettings.from_strings(all_proxy=proxy))


@pytest.mark.parametrize(
    ("scheme", "reply", "message"),
    [
        (
            "http",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            r"sent a malformed answer to CONNECT \(is it an HTTP proxy\?\)$",
        ),
        ("http", None, r"did not answer CONNECT in time$"),
        (
            "socks5h",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            r"sent an invalid SOCKS5 answer \(is it a SOCKS5 proxy\?\)$",
        ),
        ("socks5h", None, r"did not answer in time$"),
        ("socks5h", b"\x05", r"failed: closed by the proxy$"),  # an answer cut short
    ],
)
def test_a_proxy_that_answers_wrongly_is_one_proxy_error_line(
    scheme: str, reply: bytes | None, message: str
) -> None:
    with answering(reply) as port, pytest.raises(ProxyError) as info:
        through(f"{scheme}://127.0.0.1:{port}").open("https", "origin.test", 443, timeout=0.5)
    # The proxy named (never a password: it has none here), then what went wrong.
    named = rf"proxy {scheme}://127\.0\.0\.1:{port}"
    assert re.match(rf"^(connection to )?{named} {message}", str(info.value)), info.value
    assert "\n" not in str(info.value)
