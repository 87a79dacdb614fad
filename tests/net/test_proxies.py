"""Downloads through real proxies from Debian: tinyproxy and squid (HTTP forwarding and CONNECT,
Basic auth) and microsocks (SOCKS5, user/password).

Every proxy makes its outgoing connections from a loopback address of its own, and the origin
(RangeServer) records each client's address: "every connection went through the proxy" is
checked there (no request from 127.0.0.1, the direct path), and in the proxy's own log.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

import segdl
import segdl.engine.aria2c as aria2c_engine
from segdl.core.destinations import DestinationPolicy
from segdl.core.proxyrules import ProxySettings
from segdl.core.useragent import USER_AGENT
from segdl.engine.aria2c import aria2c_available
from segdl.server import ServeSettings
from segdl.testing.proxies import Microsocks, ProxyProcess, Squid, Tinyproxy, find_program
from segdl.testing.rangeserver import RangeServer, Resource
from segdl.testing.tls import CertPair, make_self_signed, server_context

for _folder in ("sources", "server"):
    _path = str(Path(__file__).resolve().parents[1] / _folder)
    if _path not in sys.path:
        sys.path.append(_path)

from fake_civitai import CivitFile, CivitModel, CivitVersion, FakeCivitAI  # noqa: E402
from helpers import prepare_source_env  # noqa: E402
from wsclient import open_client, open_server  # noqa: E402

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 12345)
PASSWORD = "pr0xy-S3CRET-77"
USER = "alice"


# Many ranges, so that many data connections go through the proxy.
def env_options() -> segdl.Options:
    """Fast options whose proxies come from the environment (the default)."""
    return segdl.Options(connections=8, split=8, save_interval=0.05, progress_interval=0.05)


def require(program: str) -> None:
    if find_program(program) is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{program} is not installed, and CI=true forbids skipping")
        pytest.skip(f"{program} is not installed")


def options(proxy: str | None = None, *, ca_certificate: str | None = None) -> segdl.Options:
    """Fast options with *proxy* as --all-proxy (and no proxy from the environment)."""
    settings = ProxySettings.from_strings(all_proxy=proxy) if proxy else ProxySettings()
    return dataclasses.replace(env_options(), proxies=settings, ca_certificate=ca_certificate)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def origin() -> Iterator[RangeServer]:
    with RangeServer() as server:
        server.add("/model.safetensors", Resource(BODY))
        yield server
    assert not server.errors


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[RangeServer, CertPair]]:
    pair = make_self_signed(tmp_path / "tls")
    with RangeServer(tls=server_context(pair)) as server:
        server.add("/model.safetensors", Resource(BODY))
        yield server, pair
    assert not server.errors


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy() -> Iterator[ProxyFactory]:
    """Start a proxy of a given class; stopped, and its directory removed, after the test."""
    started: list[ProxyProcess] = []

    def start(kind: type[ProxyProcess], **kwargs: object) -> ProxyProcess:
        require(kind.program)
        # Not under pytest's 0700 tmp_path: squid started as root works as another user.
        workdir = Path(tempfile.mkdtemp(prefix=f"segdl-{kind.program}-"))
        proxy = kind(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
        shutil.rmtree(proxy.workdir, ignore_errors=True)


def assert_all_through(server: RangeServer, proxy: ProxyProcess) -> None:
    """Every request the origin saw came from the proxy's outgoing address."""
    assert server.requests, "the origin saw no request"
    peers = {record.peer for record in server.requests}
    assert peers == {proxy.outgoing}, f"direct connections: {peers}"


def connections(server: RangeServer) -> int:
    return len({record.connection_id for record in server.requests})


def leaks(text: str | bytes) -> bool:
    data = text.encode() if isinstance(text, str) else text
    return PASSWORD.encode() in data


def tree_leaks(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and leaks(p.read_bytes())]


# ---- the native engine and the probe, through each proxy


async def test_https_through_tinyproxy_connect_with_basic_auth(
    start_proxy: ProxyFactory, tls_origin: tuple[RangeServer, CertPair], tmp_path: Path
) -> None:
    server, pair = tls_origin
    proxy = start_proxy(Tinyproxy, credentials=(USER, PASSWORD))
    url = server.url("/model.safetensors")
    result = await segdl.download(
        url, tmp_path, options=options(proxy.url, ca_certificate=str(pair.certfile))
    )
    assert Path(result.path).read_bytes() == BODY
    assert_all_through(server, proxy)
    assert {r.headers.get("user-agent") for r in server.requests} == {USER_AGENT}
    tunnels = re.findall(
        rf"Request \(file descriptor \d+\): CONNECT 127\.0\.0\.1:{server.port} ", proxy.log_text()
    )
    # A tunnel for every connection the origin saw (the probe's and every data connection's);
    # a connection opened ahead and never needed was a tunnel too.
    assert len(tunnels) >= connections(server) >= 3


async def test_plain_http_through_squid_in_absolute_form(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path
) -> None:
    proxy = start_proxy(Squid, credentials=(USER, PASSWORD))
    url = origin.url("/model.safetensors")
    result = await segdl.download(url, tmp_path, options=options(proxy.url))
    assert Path(result.path).read_bytes() == BODY
    assert_all_through(origin, proxy)
    lines = [line for line in proxy.log_text().splitlines() if f" GET {url} {USER} " in line]
    # squid logs each request it forwarded, with the user it authenticated.
    assert len(lines) == len(origin.requests) >= 3
    # 416: pieces asked for ahead, before the size was known, beyond the end of a small file.
    assert all("/206 " in line or "/416 " in line for line in lines)
    # The origin was asked in origin form by squid: the request target segdl sent was absolute.
    assert all(r.path == "/model.safetensors" for r in origin.requests)


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_through_microsocks_with_a_password(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path, scheme: str
) -> None:
    proxy = start_proxy(Microsocks, credentials=(USER, PASSWORD), scheme=scheme)
    # A name: socks5:// resolves it here and sends the address, socks5h:// sends the name.
    url = f"http://localhost:{origin.port}/model.safetensors"
    result = await segdl.download(url, tmp_path, options=options(proxy.url))
    assert Path(result.path).read_bytes() == BODY
    assert_all_through(origin, proxy)
    sent = "localhost" if scheme == "socks5h" else "127.0.0.1"
    made = re.findall(rf"connected to {sent}:{origin.port}$", proxy.log_text(), re.M)
    # Every connection the origin saw was made by the proxy (and one opened ahead, unneeded).
    assert len(made) >= connections(origin) >= 3


async def test_a_site_api_call_goes_through_the_proxy(
    start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = prepare_source_env(monkeypatch, tmp_path)
    proxy = start_proxy(Tinyproxy, credentials=(USER, PASSWORD))
    model_file = CivitFile(id=501, name="dream.safetensors", body=BODY)
    version = CivitVersion(id=2002, name="v2", files=[model_file], require_auth=False)
    with FakeCivitAI() as fake:
        fake.add(CivitModel(id=1001, name="Dream", type="Checkpoint", versions=[version]))
        monkeypatch.setenv("SEGDL_CIVITAI_URL", fake.base_url)
        result = await segdl.download(
            fake.site.url("/models/1001"), out, options=options(proxy.url)
        )
        assert Path(result.path).read_bytes() == BODY
        api = [r for r in fake.site.requests if r.path.startswith("/api/v1/")]
        assert api, "no API call was made"
        for server in (fake.site, fake.storage):
            assert {r.peer for r in server.requests} == {proxy.outgoing}
            assert {r.headers.get("user-agent") for r in server.requests} == {USER_AGENT}
        log = proxy.log_text()
        assert f"GET http://127.0.0.1:{fake.site.port}/api/v1/" in log
        assert f"GET http://127.0.0.1:{fake.storage.port}/" in log


# ---- the environment, NO_PROXY


async def test_environment_variables_are_honoured(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = start_proxy(Tinyproxy)
    # curl ignores upper-case HTTP_PROXY (httpoxy); ALL_PROXY applies.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    await segdl.download(origin.url("/model.safetensors"), tmp_path, options=env_options())
    assert_all_through(origin, proxy)


async def test_no_proxy_goes_direct(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = start_proxy(Tinyproxy)
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com, 127.0.0.0/8")
    await segdl.download(origin.url("/model.safetensors"), tmp_path, options=env_options())
    assert {r.peer for r in origin.requests} == {"127.0.0.1"}
    assert f"127.0.0.1:{origin.port}" not in proxy.log_text()


# ---- failures: one line each, the right exit code, no password anywhere


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from segdl.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    return code, captured.err


def test_a_407_is_one_line_with_exit_24(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = start_proxy(Squid, credentials=(USER, PASSWORD))
    url = origin.url("/model.safetensors")
    code, err = run_cli(
        ["get", "-q", "-d", str(tmp_path), "--http-proxy", proxy.address, url], capsys
    )
    assert code == 24
    assert err == (
        f"segdl: error: proxy http://{proxy.address} requires authentication: give it as "
        f"http://USER:PASSWORD@{proxy.address} (HTTP 407)\n"
    )
    wrong = f"http://{USER}:not-{PASSWORD}@{proxy.address}"
    code, err = run_cli(["get", "-q", "-d", str(tmp_path), "--all-proxy", wrong, url], capsys)
    assert code == 24
    assert err == (
        f"segdl: error: proxy http://{proxy.address} rejected the user name and password of "
        "its URL (HTTP 407)\n"
    )
    assert not origin.requests


def test_a_refused_tunnel_is_one_line_with_exit_6(
    start_proxy: ProxyFactory,
    tls_origin: tuple[RangeServer, CertPair],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, pair = tls_origin
    proxy = start_proxy(Tinyproxy, credentials=(USER, PASSWORD), connect_ports=(443,))
    argv = ["get", "-q", "-m", "1", "-d", str(tmp_path), "--ca-certificate", str(pair.certfile)]
    code, err = run_cli(
        [*argv, "--https-proxy", proxy.url, server.url("/model.safetensors")], capsys
    )
    assert code == 6
    assert re.fullmatch(
        rf"segdl: error: proxy http://{proxy.address} refused the tunnel to "
        rf"127\.0\.0\.1:{server.port}: HTTP 403 [^\n]*\n",
        err,
    ), err
    assert PASSWORD not in err


def test_a_socks_password_refused(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = start_proxy(Microsocks, credentials=(USER, PASSWORD))
    wrong = f"socks5h://{USER}:x{PASSWORD}@{proxy.address}"
    code, err = run_cli(
        ["get", "-q", "-d", str(tmp_path), "--all-proxy", wrong, origin.url("/model.safetensors")],
        capsys,
    )
    assert code == 24
    assert err == (
        f"segdl: error: proxy socks5h://{proxy.address} rejected the user name and password of "
        "its URL\n"
    )


def test_an_unusable_proxy_setting_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"https://{USER}:{PASSWORD}@proxy.example:443")
    code, err = run_cli(["get", "-d", str(tmp_path), "https://example.com/x"], capsys)
    assert code == 28
    assert err == (
        "segdl: error: HTTPS_PROXY: unsupported proxy scheme 'https': use http://, socks5:// or "
        "socks5h://\n"
    )


async def test_the_password_never_leaves_the_proxy_url(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not in logs (every logger at DEBUG), events, errors, the partial's sidecars."""
    caplog.set_level(logging.DEBUG)
    proxy = start_proxy(Squid, credentials=(USER, PASSWORD))
    origin.rate_limit = 2 * MIB
    events: list[segdl.Event] = []
    with trio.move_on_after(30) as scope:

        def on_event(event: segdl.Event) -> None:
            events.append(event)
            if isinstance(event, segdl.Progress) and event.downloaded >= MIB:
                scope.cancel()

        await segdl.download(
            origin.url("/model.safetensors"),
            tmp_path,
            options=options(proxy.url),
            on_event=on_event,
        )
    assert scope.cancelled_caught
    sidecars = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.endswith(".aria2") for name in sidecars), sidecars
    assert tree_leaks(tmp_path) == []
    assert not leaks(json.dumps([e.to_dict() for e in events], default=str))
    assert not leaks("\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records))
    # What the proxy was sent is the Basic credential, never the password in clear.
    assert_all_through(origin, proxy)


# ---- the aria2c engine


def require_aria2c() -> None:
    if not aria2c_available():
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("aria2c is not installed, and CI=true forbids skipping")
        pytest.skip("aria2c is not installed")


@pytest.mark.integration
@pytest.mark.parametrize("secure", [False, True])
async def test_aria2c_through_squid(
    start_proxy: ProxyFactory,
    origin: RangeServer,
    tls_origin: tuple[RangeServer, CertPair],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secure: bool,
) -> None:
    require_aria2c()
    proxy = start_proxy(Squid, credentials=(USER, PASSWORD))
    server = tls_origin[0] if secure else origin
    seen: dict[str, object] = {}
    real_running = aria2c_engine._running
    real_write = aria2c_engine._write_private

    def running(argv: list[str]):  # type: ignore[no-untyped-def]
        seen["argv"] = list(argv)
        return real_running(argv)

    def write_private(path: Path, text: str) -> None:
        seen["conf"] = text
        real_write(path, text)
        seen["mode"] = path.stat().st_mode & 0o777

    monkeypatch.setattr(aria2c_engine, "_running", running)
    monkeypatch.setattr(aria2c_engine, "_write_private", write_private)
    # aria2c would read this by itself and go direct; segdl's settings must be the only ones.
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = server.url("/model.safetensors")
    settings = ProxySettings.from_strings(all_proxy=proxy.url, no_proxy="")
    certificate = str(tls_origin[1].certfile) if secure else None
    run_options = dataclasses.replace(options(ca_certificate=certificate), proxies=settings)
    result = await segdl.download(url, tmp_path, engine="aria2c", options=run_options)
    assert Path(result.path).read_bytes() == BODY
    assert_all_through(server, proxy)
    log = proxy.log_text()
    method = f"CONNECT 127.0.0.1:{server.port}" if secure else f"GET {url}"
    assert f" {method} {USER} " in log
    assert not leaks(" ".join(seen["argv"]))  # type: ignore[arg-type]
    assert PASSWORD in str(seen["conf"])
    assert seen["mode"] == 0o600
    assert tree_leaks(tmp_path) == []


async def test_aria2c_refuses_socks_in_one_line(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path
) -> None:
    require_aria2c()
    proxy = start_proxy(Microsocks, credentials=(USER, PASSWORD))
    with pytest.raises(segdl.DownloadError) as caught:
        await segdl.download(
            origin.url("/model.safetensors"), tmp_path, engine="aria2c", options=options(proxy.url)
        )
    assert str(caught.value) == (
        f"the aria2c engine cannot use a SOCKS proxy (socks5h://{proxy.address} for "
        f"{origin.url('/model.safetensors')}); use --engine native"
    )
    assert_all_through(origin, proxy)  # the probe went through it


# ---- the destination policy through a proxy


@pytest.mark.parametrize("kind", [Tinyproxy, Microsocks])
async def test_the_destination_policy_applies_through_proxies(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path, kind: type[ProxyProcess]
) -> None:
    proxy = start_proxy(kind)
    strict = dataclasses.replace(
        options(proxy.url), destinations=DestinationPolicy(allow_internal=False)
    )
    for url, words in (
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        (origin.url("/model.safetensors"), "a loopback address"),
    ):
        with pytest.raises(segdl.DestinationRefused, match=words):
            await segdl.download(url, tmp_path, options=strict)
    assert origin.requests == []
    assert "169.254" not in proxy.log_text()
    # Where internal addresses are allowed (a server on loopback), the proxy is used.
    allowed = dataclasses.replace(strict, destinations=DestinationPolicy(allow_internal=True))
    await segdl.download(origin.url("/model.safetensors"), tmp_path, options=allowed)
    assert_all_through(origin, proxy)


def test_the_user_agent_names_this_version() -> None:
    assert importlib.metadata.version("segdl") == segdl.__version__
    assert USER_AGENT.startswith(f"segdl/{segdl.__version__} ")
    browser_words = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
    assert not any(word in USER_AGENT.lower() for word in browser_words)


async def test_socks_failures_name_the_proxy(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path
) -> None:
    proxy = start_proxy(Microsocks, credentials=(USER, PASSWORD))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    quick = dataclasses.replace(options(proxy.url), retry=segdl.RetryPolicy(max_tries=1))
    with pytest.raises(segdl.ProxyError) as caught:
        await segdl.download(f"http://127.0.0.1:{port}/x", tmp_path, options=quick)
    assert str(caught.value) == (
        f"proxy socks5h://{proxy.address} could not connect to 127.0.0.1:{port}: connection refused"
    )
    assert caught.value.exit_code == 6
    # A proxy that is not there at all.
    gone = dataclasses.replace(
        quick,
        proxies=ProxySettings.from_strings(
            all_proxy=f"socks5://{USER}:{PASSWORD}@127.0.0.1:{port}"
        ),
    )
    with pytest.raises(segdl.ProxyError) as caught:
        await segdl.download(origin.url("/model.safetensors"), tmp_path, options=gone)
    assert str(caught.value) == (
        f"cannot connect to proxy socks5://127.0.0.1:{port}: Connection refused"
    )


async def test_the_server_downloads_through_its_proxy_and_keeps_the_password(
    start_proxy: ProxyFactory, origin: RangeServer, tmp_path: Path
) -> None:
    """``segdl serve --all-proxy``: replies, the queue file and the partial hold no password."""
    proxy = start_proxy(Tinyproxy, credentials=(USER, PASSWORD))
    origin.rate_limit = 2 * MIB
    settings = ServeSettings(options=options(proxy.url))
    models = tmp_path / "models"
    models.mkdir()
    with trio.fail_after(60):
        async with open_server(models, settings) as info, open_client(info.port) as client:
            id = await client.send(
                "download", {"type": "SD", "url": origin.url("/model.safetensors")}
            )
            seen: list[dict[str, object]] = []
            while not (models / ".segdl-queue.json").exists() or not any(
                p.name.endswith(".aria2") for p in (models / "SD").glob("*")
            ):
                message = await client.receive()
                seen.append(message)
            assert tree_leaks(models) == []
            replies = await client.download_replies(id)
    assert replies[-1]["status"] == "success"
    assert not leaks(json.dumps([*seen, *replies], default=str))
    assert tree_leaks(models) == []
    assert_all_through(origin, proxy)
