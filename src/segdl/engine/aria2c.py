"""The aria2c engine: a private aria2c process driven over JSON-RPC on a loopback WebSocket.

The file decisions (resume, restart, complete, exists) are made before any engine runs
(:mod:`segdl.engine.target`), so both engines treat a partial alike; the sidecar is aria2's
own control file, which is why a download may change engine between runs.  aria2c writes
the partial (its ``out`` is ``NAME.part``); segdl verifies and publishes it, as for any
engine.

One aria2c per download, started with ``--enable-rpc`` on a free 127.0.0.1 port.  What must
stay private never reaches argv, which any local user can read (``/proc/PID/cmdline``): the RPC
secret goes in a ``--conf-path`` file in a private directory (removed once aria2c has read
it), and request headers (tokens) travel only inside ``aria2.addUri``'s options.  aria2c
keeps serving on ``::1`` when 127.0.0.1:PORT is taken (seen with 1.36), so before the secret
is sent the listening socket is checked to be aria2c's own (``/proc``).

Progress comes from polling ``aria2.tellStatus`` every progress interval; the notifications
(``aria2.onDownloadComplete`` / ``Error`` / ``Stop``) only wake the poll early.  One task
reads the socket, so no reply or notification is lost and no extra nursery is needed.

Stopping is unconditional: when the download ends, fails or is cancelled, an unfinished
download is ``aria2.forceRemove``d (aria2c saves its control file as it stops it; the status is
polled until it is no longer active), then aria2c gets SIGTERM (its graceful halt, which would
save the control file too) and SIGKILL if that is not enough, each wait bounded and shielded;
the process is always reaped.  ``aria2.shutdown``/``forceShutdown`` are not used: aria2c
schedules the halt three seconds after answering them (``TimedHaltCommand``, "to give time to
client to receive RPC response"), which would add 4 s to every download.  Closing the
WebSocket right after SIGTERM wakes aria2c's idle event loop, which otherwise notices the
signal only at its next one-second tick.  ``--stop-with-process`` ends aria2c should this
process die without cleaning up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
import trio_websocket

from ..core.checksum import Checksum
from ..core.events import Progress
from ..core.progress import MIB, RateMeter
from ..core.proxyrules import ProxySettings
from ..core.urls import signed_until
from ..errors import (
    AuthError,
    BadResponse,
    ChecksumMismatch,
    DiskError,
    DiskFull,
    DownloadError,
    FileExists,
    HTTPStatusError,
    LinkExpired,
    NetworkError,
    NotFound,
    RemoteChanged,
    ResumeError,
    ServerBusy,
    Timeout,
    redact_url,
    status_error,
)
from ..io import files
from ..io.dataplane import USER_AGENT
from ..io.probe import ProbeResult
from .aria2proxy import aria2_environment, aria2_proxy_conf, check_aria2_proxies
from .base import Transfer, TransferResult
from .options import Options
from .target import Target
from .throttle import RateLimit

__all__ = ["Aria2cEngine", "aria2c_available", "find_aria2c"]

NOT_INSTALLED = "aria2c engine requested but aria2c is not installed (apt-get install aria2)"

# Bounds on waiting for aria2c; every one of them ends in a clear error or a kill.
STARTUP_TIMEOUT = 10.0  # until the RPC port answers
RPC_TIMEOUT = 15.0  # for one RPC reply
SHUTDOWN_TIMEOUT = 5.0  # for forceRemove to stop the download, and the socket's close
TERM_TIMEOUT = 10.0  # after SIGTERM (aria2c flushes its disk cache and saves the control file)
KILL_TIMEOUT = 5.0  # after SIGKILL
PORT_ATTEMPTS = 5  # fresh ports tried when another process holds the chosen one

# What tellStatus is asked for (all values come back as strings).
STATUS_KEYS = (
    "status",
    "totalLength",
    "completedLength",
    "downloadSpeed",
    "connections",
    "errorCode",
    "errorMessage",
)

FINAL_STATES = frozenset({"complete", "error", "removed"})

# A site's signed link is swapped for a fresh one this long before it expires (aria2c keeps
# the URI it was given for every piece); one that expired anyway restarts aria2c on its
# control file with a fresh link, at most this many times.
RENEW_BEFORE_EXPIRY = 30.0
MAX_RESTARTS_FOR_LINKS = 5

# hashlib names (segdl's Checksum) to aria2's --checksum types.
ARIA2_DIGESTS = {
    "md5": "md5",
    "sha1": "sha-1",
    "sha224": "sha-224",
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
}


def find_aria2c() -> str | None:
    """The aria2c executable on ``PATH``, or None."""
    return shutil.which("aria2c")


def aria2c_available() -> bool:
    return find_aria2c() is not None


# -- aria2's exit codes -------------------------------------------------------------------

# aria2's error codes (manual "EXIT STATUS", anchors §1.11) to segdl's tree, with the
# words used when aria2 gives no errorMessage (it gives none for a checksum error).
_ERROR_CLASSES: dict[int, tuple[type[DownloadError], str]] = {
    1: (DownloadError, "unknown error"),
    2: (Timeout, "timed out"),
    3: (NotFound, "resource not found"),
    4: (NotFound, "too many 'not found' answers"),
    5: (NetworkError, "download too slow"),
    6: (NetworkError, "network problem"),
    7: (DownloadError, "download unfinished"),
    8: (ResumeError, "the server cannot resume the download"),
    9: (DiskFull, "not enough disk space"),
    10: (ResumeError, "the piece length differs from the control file's"),
    11: (FileExists, "the same file is already being downloaded"),
    13: (FileExists, "the file already exists"),
    14: (DiskError, "renaming the file failed"),
    15: (DiskError, "could not open the existing file"),
    16: (DiskError, "could not create or truncate the file"),
    17: (DiskError, "file I/O error"),
    18: (DiskError, "could not create the directory"),
    19: (NetworkError, "name resolution failed"),
    22: (BadResponse, "bad HTTP response"),
    23: (BadResponse, "too many redirects"),
    24: (AuthError, "HTTP authorization failed"),
    29: (ServerBusy, "the server is overloaded or in maintenance"),
    32: (ChecksumMismatch, "checksum validation failed"),
}
# The HTTP status aria2 does not state for the codes that imply one.
_IMPLIED_STATUS = {NotFound: 404, AuthError: 401, ServerBusy: 503}
_STATUS_IN_MESSAGE = re.compile(r"\bstatus=(\d{3})\b")
_URL_IN_MESSAGE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# aria2 reports connection failures as code 1 ("unknown"); they are network errors.
_NETWORK_WORDS = re.compile(
    r"establish connection|connection refused|connection reset|network is unreachable"
    r"|no route to host|tls|ssl|certificate|handshake|eof",
    re.IGNORECASE,
)


def _one_line(text: str, limit: int = 300) -> str:
    text = _URL_IN_MESSAGE.sub(lambda m: redact_url(m.group(0)), text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_from_status(code: int, message: str, *, url: str) -> DownloadError:
    """The segdl exception for aria2's ``errorCode`` and ``errorMessage`` of a download."""
    cls, fallback = _ERROR_CLASSES.get(code, (DownloadError, f"error code {code}"))
    detail = _one_line(message) or fallback
    where = redact_url(url)
    text = f"aria2c: {detail} ({where})"
    status = _STATUS_IN_MESSAGE.search(message)
    if status is not None and cls in (BadResponse, NotFound, AuthError, ServerBusy):
        # "The response status is not successful. status=403": classify like native does.
        number = int(status.group(1))
        error = status_error(number, "", url=url)
        return type(error)(text, url=url, status=number)
    if issubclass(cls, HTTPStatusError):
        return cls(text, url=url, status=_IMPLIED_STATUS.get(cls, 0))
    if cls is DownloadError and code == 1 and _NETWORK_WORDS.search(message):
        cls = NetworkError
    return cls(text, url=url)


# -- the engine -----------------------------------------------------------------------------


class Aria2cEngine:
    """Drives an installed aria2c over its RPC; the same contract as the native engine:
    the same events, :class:`~segdl.errors.DownloadError` on failure, and on cancellation
    aria2c is stopped and the partial file and its control file stay."""

    name = "aria2c"

    def check(self, transfer_needs_transform: bool) -> None:
        if not aria2c_available():
            raise DownloadError(NOT_INSTALLED)
        if transfer_needs_transform:
            raise DownloadError(
                "the aria2c engine cannot download files that are decrypted chunk by chunk "
                "(MEGA); use --engine native"
            )

    async def transfer(self, job: Transfer) -> TransferResult:
        binary = find_aria2c()
        if binary is None:
            raise DownloadError(NOT_INSTALLED)
        probe = job.probe
        _check_headers(probe.headers, probe.url)
        proxies = job.options.proxies or ProxySettings()
        check_aria2_proxies(proxies, [probe.url, *(m.url for m in job.mirrors)])
        renewals = 0
        progress = _Progress()
        try:
            while True:
                # aria2c spreads connections over several URIs itself, but sends one set of
                # headers to all of them: only mirrors wanting exactly the same headers join.
                mirrors = [m.url for m in job.mirrors if m.headers == probe.headers]
                before = progress.completed
                try:
                    async with open_aria2c(binary, job.options) as aria2:
                        await _run_download(aria2, job, probe, mirrors, progress)
                    break
                except (AuthError, BadResponse) as exc:
                    # A site's signed link expired before aria2c was told a fresh one (it
                    # keeps the URI it was given for every piece): a fresh link, and aria2c
                    # goes on from its control file.  aria2c reports it as an auth failure,
                    # or, once the refused URI was its last, as "No URI available".
                    expired = isinstance(exc, AuthError) or "no uri available" in str(exc).lower()
                    stuck = renewals > 0 and progress.completed <= before  # renewal did not help
                    if not expired or job.renew is None or stuck:
                        raise
                    if renewals >= MAX_RESTARTS_FOR_LINKS:
                        raise
                    probe = await _fresh_link(job, exc)
                    renewals += 1
        finally:
            # aria2c rewrote the control file without segdl's trailer; once it has stopped,
            # the validators go back in, so that the next run still sees a changed file.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    files.seal_control, job.target.path, job.target.validators
                )
        # aria2c checked --checksum itself before it reported the download complete.
        return TransferResult(checksum_verified=job.options.checksum is not None)


async def _fresh_link(job: Transfer, refused: DownloadError) -> ProbeResult:
    assert job.renew is not None
    try:
        return await job.renew()
    except RemoteChanged:
        raise
    except DownloadError as exc:
        raise LinkExpired(
            f"the download link expired and could not be renewed ({exc})",
            url=refused.url,
            status=403,
        ) from exc


def _check_headers(headers: Mapping[str, str], url: str) -> None:
    # A line break would let a header value smuggle another header (or option) into aria2c.
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0"):
            raise DownloadError(
                f"header {name!r} contains a line break; not sent to aria2c", url=url
            )


def download_options(
    probe: ProbeResult, path: Path, options: Options, start: Target
) -> dict[str, str | list[str]]:
    """``aria2.addUri``'s per-download options for this download (all values strings)."""
    piece_length = start.pieces.piece_length if start.pieces is not None else options.piece_length
    headers = dict(probe.headers)
    if not any(name.lower() == "user-agent" for name in headers):
        headers["User-Agent"] = USER_AGENT
    result: dict[str, str | list[str]] = {
        "dir": os.path.abspath(path.parent),
        "out": path.name,
        "split": str(options.split),
        "max-connection-per-server": str(options.connections),
        "min-split-size": str(options.min_split_size),
        "max-tries": str(options.retry.max_tries),
        "timeout": str(_seconds(options.read_timeout)),
        "connect-timeout": str(_seconds(options.connect_timeout)),
        # open_target has decided, and -c is its business: a control file beside the
        # file means resume (aria2 does without -c); it wrote one for a -c prefix too.  With
        # no control file the file is preallocated to full size for a fresh start, which
        # aria2's -c would take for a finished download.
        "continue": "false",
        "allow-overwrite": "true",
        "auto-file-renaming": "false",
        "always-resume": "true",
        "max-resume-failure-tries": "0",
        "file-allocation": "none",  # open_target allocated the file
        "remote-time": "false",
        "conditional-get": "false",
        "http-accept-gzip": "false",
        "follow-torrent": "false",
        "follow-metalink": "false",
        "header": [f"{name}: {value}" for name, value in headers.items()],
    }
    # aria2 accepts piece lengths of 1M-1G; another length in the control file is converted.
    if MIB <= piece_length <= 1024 * MIB:
        result["piece-length"] = str(piece_length)
    else:
        result["piece-length"] = str(MIB)
        result["allow-piece-length-change"] = "true"
    if options.checksum is not None:
        result["checksum"] = _aria2_checksum(options.checksum)
    return result


def _aria2_checksum(checksum: Checksum) -> str:
    kind = ARIA2_DIGESTS.get(checksum.algorithm)
    if kind is None:
        raise DownloadError(f"aria2c cannot verify a {checksum.algorithm} checksum")
    return f"{kind}={checksum.hexdigest}"


def _seconds(value: float) -> int:
    """aria2's timeouts are whole seconds, 1-600."""
    return min(600, max(1, math.ceil(value)))


@dataclass
class _Progress:
    completed: int = 0  # aria2c's completedLength at its last report


async def _run_download(
    aria2: Aria2RPC,
    job: Transfer,
    probe: ProbeResult,
    mirrors: Sequence[str],
    progress: _Progress,
) -> None:
    start, options, emit, limits = job.target, job.options, job.emit, job.limits
    path = start.path
    uris = [probe.url, *mirrors]
    link_until = signed_until(probe.url) if job.renew is not None else None
    add_options = download_options(probe, path, options, start)
    applied_limit = _aria2_limit(options, limits)
    add_options["max-download-limit"] = str(applied_limit)
    gid = await aria2.add_uri([str(u) for u in uris], add_options)
    meter = RateMeter(total=probe.size, start_bytes=start.resumed_bytes, now=trio.current_time())
    while True:
        status = await aria2.tell_status(gid)
        state = status.get("status", "")
        total = _int(status.get("totalLength")) or probe.size
        downloaded = _int(status.get("completedLength")) or 0
        if not _int(status.get("totalLength")):
            # aria2c loads the control file only once the first response gave the size;
            # until then its count says nothing about what the partial holds.
            downloaded = max(downloaded, start.resumed_bytes)
        progress.completed = max(progress.completed, downloaded)
        if state == "complete":
            emit(
                Progress(
                    progress=1.0,
                    rate=0.0,
                    eta=0.0,
                    downloaded=downloaded,
                    total=total if total is not None else downloaded,
                    connections=0,
                )
            )
            return
        if state == "error":
            code = _int(status.get("errorCode")) or 1
            if code == 32 and options.checksum is not None:
                raise ChecksumMismatch(
                    f"checksum mismatch for {start.final.name}: expected "
                    f"{options.checksum.algorithm} "
                    f"{options.checksum.hexdigest} (checked by aria2c)",
                    url=probe.url,
                )
            raise error_from_status(code, status.get("errorMessage", ""), url=probe.url)
        if state == "removed":
            raise DownloadError("aria2c removed the download before it finished", url=probe.url)
        meter.total = total
        snap = meter.sample(downloaded, trio.current_time())
        emit(
            Progress(
                progress=snap.fraction,
                rate=snap.rate / MIB,
                eta=snap.eta,
                downloaded=downloaded,
                total=total,
                connections=_int(status.get("connections")) or 0,
            )
        )
        if link_until is not None and time.time() > link_until - RENEW_BEFORE_EXPIRY:
            # The site's link is about to expire: swap in a fresh one while aria2c runs.
            fresh = await _fresh_link(job, AuthError("link expiring", url=probe.url))
            await aria2.call("aria2.changeUri", gid, 1, [str(probe.url)], [str(fresh.url)], 0)
            probe, link_until = fresh, signed_until(fresh.url)
        limit = _aria2_limit(options, limits)
        if limit != applied_limit:
            # A limit changed while running: aria2 applies a new max-download-limit live.
            await aria2.call("aria2.changeOption", gid, {"max-download-limit": str(limit)})
            applied_limit = limit
        await aria2.wait_for_news(gid, options.progress_interval)


def _aria2_limit(options: Options, limits: Sequence[RateLimit]) -> int:
    """aria2's ``max-download-limit`` (bytes/s, 0 = none): the tightest of our limits.

    aria2c limits each download on its own, so a limit shared with other downloads (an
    overall limit) is applied to this one as a whole rather than shared.
    """
    rates = [limit.rate for limit in limits if limit.rate is not None]
    if options.max_download_limit is not None:
        rates.append(options.max_download_limit)
    return max(1, int(min(rates))) if rates else 0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise DownloadError(f"aria2c answered tellStatus with {type(value).__name__}")
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


# -- JSON-RPC over the WebSocket --------------------------------------------------------------


class Aria2RPC:
    """JSON-RPC 2.0 calls to one aria2c, and the notifications it pushes.

    Only one task uses it at a time: the replies and notifications arrive on one socket and
    are read by whoever is waiting.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, secret: str, log: Path) -> None:
        self._ws = ws
        self._token = f"token:{secret}"
        self._ids = itertools.count(1)
        self._news: set[str] = set()  # GIDs with a notification not yet acted upon
        self._log = log
        #: GIDs added and not yet seen complete, failed or removed.
        self.unfinished: set[str] = set()

    async def add_uri(self, uris: list[str], options: Mapping[str, str | list[str]]) -> str:
        gid = await self.call("aria2.addUri", uris, dict(options))
        if not isinstance(gid, str):
            raise DownloadError(f"aria2c answered addUri with {gid!r} instead of a GID")
        self.unfinished.add(gid)
        return gid

    async def tell_status(self, gid: str) -> dict[str, str]:
        status = _string_map(await self.call("aria2.tellStatus", gid, list(STATUS_KEYS)))
        if status.get("status") in FINAL_STATES:
            self.unfinished.discard(gid)
        return status

    async def stop_unfinished(self) -> None:
        """Stop every unfinished download; aria2c saves their control files as it does."""
        for gid in sorted(self.unfinished):
            with contextlib.suppress(DownloadError):
                await self.call("aria2.forceRemove", gid)
        while self.unfinished:
            for gid in sorted(self.unfinished):
                status = await self.tell_status(gid)
                if status.get("status") in ("paused", "waiting"):
                    self.unfinished.discard(gid)  # not transferring: nothing left to save
            if self.unfinished:
                await trio.sleep(0.02)

    async def call(self, method: str, *params: object) -> object:
        """Call *method* with the secret; return its result or raise DownloadError."""
        request_id = f"segdl-{next(self._ids)}"
        request = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": method,
            "params": [self._token, *params],
        }
        with trio.move_on_after(RPC_TIMEOUT):
            await self._send(json.dumps(request))
            while True:
                message = await self._receive()
                if message.get("id") != request_id:
                    self._note(message)  # a notification, or a reply nobody waits for
                    continue
                error = message.get("error")
                if error is not None:
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise DownloadError(f"aria2c refused {method}: {_one_line(str(detail))}")
                return message.get("result")
        raise DownloadError(f"aria2c did not answer {method} within {RPC_TIMEOUT:g} s")

    async def wait_for_news(self, gid: str, seconds: float) -> None:
        """Sleep up to *seconds*, less if aria2c notifies something about *gid*."""
        with trio.move_on_after(seconds):
            while gid not in self._news:
                self._note(await self._receive())
        self._news.discard(gid)

    def _note(self, message: dict[str, object]) -> None:
        method = message.get("method")
        params = message.get("params")
        if not isinstance(method, str) or not method.startswith("aria2.on"):
            return
        if isinstance(params, list):
            for event in params:
                if isinstance(event, dict) and isinstance(event.get("gid"), str):
                    self._news.add(event["gid"])

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise await self._gone() from exc

    async def _receive(self) -> dict[str, object]:
        try:
            data = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise await self._gone() from exc
        try:
            message = json.loads(data)
        except ValueError as exc:
            raise DownloadError("aria2c sent a message that is not JSON") from exc
        if not isinstance(message, dict):
            raise DownloadError("aria2c sent a JSON message that is not an object")
        return message

    async def _gone(self) -> DownloadError:
        detail = await trio.to_thread.run_sync(_log_tail, self._log)
        return DownloadError("aria2c closed its RPC connection" + (f": {detail}" if detail else ""))


def _log_tail(log: Path) -> str:
    """aria2c's last error line from its log, redacted, or ''."""
    try:
        lines = log.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "ERROR" in line or "Exception" in line]
    picked = errors[-1] if errors else (lines[-1] if lines else "")
    return _one_line(picked)


# -- the process ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    process: trio.Process
    terminated: bool = False

    def terminate(self) -> None:
        if self.process.returncode is None and not self.terminated:
            # aria2c's first SIGTERM is a graceful halt that saves unfinished control files;
            # a second would make it hurry.
            self.process.terminate()
        self.terminated = True


@asynccontextmanager
async def _running(argv: list[str]) -> AsyncIterator[_Child]:
    """Run *argv*; when the block ends, however it ends, the process has exited and is reaped."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Not in the terminal's process group: Ctrl-C reaches segdl, which stops aria2c in
        # order (a shutdown that saves the control file), instead of both racing.
        start_new_session=True,
        # segdl decides the proxies (aria2_proxy_conf); aria2c must not read its own.
        env=aria2_environment(os.environ),
    )
    child = _Child(process)
    try:
        yield child
    finally:
        await _stop(child)


async def _stop(child: _Child) -> None:
    process = child.process
    with trio.CancelScope(shield=True):
        child.terminate()
        with trio.move_on_after(TERM_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(KILL_TIMEOUT):
                await process.wait()


def _argv(binary: str, *, conf: Path, log: Path, port: int, options: Options) -> list[str]:
    argv = [
        binary,
        f"--conf-path={conf}",  # holds the RPC secret; replaces ~/.aria2/aria2.conf
        "--enable-rpc=true",
        f"--rpc-listen-port={port}",
        "--rpc-listen-all=false",
        "--rpc-allow-origin-all=false",
        "--rpc-save-upload-metadata=false",
        "--daemon=false",
        "--quiet=true",
        f"--log={log}",
        "--log-level=warn",
        f"--auto-save-interval={_seconds(options.save_interval)}",
        "--max-concurrent-downloads=1",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--no-netrc=true",  # credentials come from segdl's headers only
        "--follow-torrent=false",
        "--follow-metalink=false",
        "--check-certificate=true",
        f"--stop-with-process={os.getpid()}",
    ]
    return argv


def _ca_bundle(options: Options, workdir: Path) -> Path | None:
    """A CA file for aria2c: the system store (or ``SSL_CERT_FILE``) plus ``ca_certificate``.

    aria2c's ``--ca-certificate`` replaces its trust store; segdl's adds to it, so the two
    are concatenated.  None when aria2c's own default is what segdl would trust too.
    """
    env_file = os.environ.get("SSL_CERT_FILE")
    if not options.ca_certificate and not env_file:
        return None
    parts: list[bytes] = []
    system = env_file or _system_cafile()
    for name in (system, options.ca_certificate):
        if not name:
            continue
        try:
            parts.append(Path(name).read_bytes())
        except OSError as exc:
            raise DownloadError(f"cannot read CA certificate {name}: {exc.strerror}") from exc
    bundle = workdir / "ca-bundle.pem"
    bundle.write_bytes(b"\n".join(parts))
    return bundle


def _system_cafile() -> str | None:
    cafile = ssl.get_default_verify_paths().cafile
    return cafile if cafile and os.path.exists(cafile) else None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _loopback_listeners(port: int) -> set[str] | None:
    """Inodes of sockets listening on 127.0.0.1:*port*, from /proc; None where unknown."""
    address = int.from_bytes(socket.inet_aton("127.0.0.1"), sys.byteorder)
    local = f"{address:08X}:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    return {row[9] for row in rows if len(row) > 9 and row[1] == local and row[3] == "0A"}


def _owns_socket(pid: int, inodes: set[str]) -> bool | None:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
    return False


def _listener_state(pid: int, port: int) -> str:
    """``"ours"`` (aria2c listens), ``"taken"`` (someone else does), ``"none"`` or
    ``"unknown"`` (no /proc to tell)."""
    inodes = _loopback_listeners(port)
    if inodes is None:
        return "unknown"
    if not inodes:
        return "none"
    owned = _owns_socket(pid, inodes)
    if owned is None:
        return "unknown"
    return "ours" if owned else "taken"


async def _wait_until_listening(child: _Child, port: int, log: Path) -> bool:
    """True once aria2c serves RPC on 127.0.0.1:*port*; False if another process has it."""
    process = child.process
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            if process.poll() is not None:
                detail = await trio.to_thread.run_sync(_log_tail, log)
                if "bind" in detail.lower():
                    return False
                raise DownloadError(
                    f"aria2c exited at start (exit code {process.returncode})"
                    + (f": {detail}" if detail else "")
                )
            state = await trio.to_thread.run_sync(_listener_state, process.pid, port)
            if state == "ours":
                return True
            if state == "taken":
                return False
            if state == "unknown":
                # No /proc: the best available sign is that the port accepts.
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    pass
                else:
                    await stream.aclose()
                    return True
            await trio.sleep(0.02)
    raise DownloadError(f"aria2c did not start its RPC server within {STARTUP_TIMEOUT:g} s")


@asynccontextmanager
async def open_aria2c(binary: str, options: Options) -> AsyncIterator[Aria2RPC]:
    """Start a private aria2c with RPC on loopback and yield a connected client.

    When the block ends, however it ends, aria2c has been shut down (saving the control
    file of an unfinished download) and reaped, and its private directory is removed.
    """
    workdir = Path(await trio.to_thread.run_sync(partial(tempfile.mkdtemp, prefix="segdl-aria2c-")))
    try:
        bundle = await trio.to_thread.run_sync(_ca_bundle, options, workdir)
        for attempt in range(PORT_ATTEMPTS):
            conf = workdir / f"aria2-{attempt}.conf"
            log = workdir / f"aria2c-{attempt}.log"
            secret = secrets.token_hex(24)
            # The proxies' credentials, like the secret, stay out of argv.
            proxy_conf = aria2_proxy_conf(options.proxies or ProxySettings())
            text = f"rpc-secret={secret}\n" + proxy_conf
            await trio.to_thread.run_sync(_write_private, conf, text)
            port = _free_port()
            argv = _argv(binary, conf=conf, log=log, port=port, options=options)
            if bundle is not None:
                argv.append(f"--ca-certificate={bundle}")
            async with _running(argv) as child:
                listening = await _wait_until_listening(child, port, log)
                await trio.to_thread.run_sync(partial(conf.unlink, missing_ok=True))
                if not listening:
                    continue  # the port was taken between choosing and binding: another
                connected = False
                pending: BaseException | None = None
                try:
                    async with trio_websocket.open_websocket_url(
                        f"ws://127.0.0.1:{port}/jsonrpc",
                        connect_timeout=STARTUP_TIMEOUT,
                        disconnect_timeout=SHUTDOWN_TIMEOUT,
                    ) as ws:
                        connected = True
                        rpc = Aria2RPC(ws, secret, log)
                        try:
                            yield rpc
                        finally:
                            await _shutdown(rpc, ws, child)
                except trio_websocket.HandshakeError as exc:
                    if not connected:
                        raise DownloadError(
                            f"could not connect to aria2c's RPC server on port {port}: {exc!r}"
                        ) from exc
                    # Only the closing handshake timed out (DisconnectionTimeout); aria2c is
                    # stopped below regardless.  What the block raised, if anything, wins.
                    pending = exc.__context__
                if pending is not None:
                    raise pending
            return
        raise DownloadError("could not find a free loopback port for aria2c's RPC server")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(shutil.rmtree, workdir, ignore_errors=True))


async def _shutdown(rpc: Aria2RPC, ws: trio_websocket.WebSocketConnection, child: _Child) -> None:
    """Stop what is unfinished (saving its control file), SIGTERM aria2c, close the socket.

    Shielded and bounded; a failure here only means aria2c gets SIGKILL a little later.
    """
    with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
        with contextlib.suppress(DownloadError):
            await rpc.stop_unfinished()
        child.terminate()
        # The close wakes aria2c's event loop, so the signal is handled now, not at the
        # next one-second tick.
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await ws.aclose()
        # trio-websocket 0.12 leaves the TCP stream open when the peer vanished without a
        # closing handshake (aria2c killed): aclose() returns early on an aborted socket.
        # Closing a trio stream twice is harmless.
        await ws._stream.aclose()
    child.terminate()
