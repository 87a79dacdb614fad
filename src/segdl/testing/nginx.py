"""A private nginx serving a directory on loopback, for integration tests and benchmarks.

Everything nginx writes (pid, lock, logs, temp files) stays in one work directory, so it runs
as root and as an ordinary user alike, next to (and never touching) a system nginx. nginx runs
in the foreground (``daemon off``) under a master process that we start and stop ourselves.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol
from urllib.parse import quote

__all__ = ["Nginx", "NginxError", "NginxFactory", "find_nginx", "nginx_available"]

_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class NginxError(RuntimeError):
    """nginx could not be started; the message ends with the tail of its error log."""


def find_nginx() -> str | None:
    """The nginx binary: the usual sbin paths (often not on an ordinary user's PATH) first."""
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nginx")


def nginx_available() -> bool:
    binary = find_nginx()
    return binary is not None and _build_info(binary) is not None


@functools.cache
def _build_info(binary: str) -> tuple[tuple[int, ...], str] | None:
    """nginx's version and configure arguments (``nginx -V`` writes them to stderr)."""
    try:
        result = subprocess.run(
            [binary, "-V"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    output = result.stdout + result.stderr
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", output)
    if result.returncode != 0 or match is None:
        return None
    return tuple(int(part) for part in match.group(1).split(".")), output


def _quote(value: str | Path) -> str:
    """An nginx configuration string literal."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class Nginx:
    """nginx serving ``root`` over HTTP, and over HTTPS when ``certfile``/``keyfile`` are given.

    ``limit_rate`` is nginx's per-connection limit (e.g. ``"8m"``). ``workdir`` receives the
    configuration, logs and temp files (a fresh temporary directory, removed on stop, if
    omitted). ``log_format`` replaces the access log's "combined" format with nginx variables
    of your choice (e.g. ``"$msec $request_time $body_bytes_sent"``; benchmarks count bytes
    served with it). Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        root: Path,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        limit_rate: str | None = None,
        workdir: Path | None = None,
        workers: int = 1,
        access_log: bool = True,
        log_format: str | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile go together")
        if limit_rate is not None and not re.fullmatch(r"[0-9]+[kKmMgG]?", limit_rate):
            raise ValueError(f"not an nginx rate: {limit_rate!r}")
        self.root = Path(root).resolve()
        self.certfile = None if certfile is None else Path(certfile).resolve()
        self.keyfile = None if keyfile is None else Path(keyfile).resolve()
        self.limit_rate = limit_rate
        self.workers = workers
        self.access_log = access_log
        self.log_format = log_format
        self.host = host
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._http_port: int | None = None
        self._https_port: int | None = None

    # ---- addresses

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            raise RuntimeError("nginx is not running")
        return self._http_port

    @property
    def https_port(self) -> int:
        if self._https_port is None:
            raise RuntimeError("nginx is not running with TLS (no certfile/keyfile)")
        return self._https_port

    def _url(self, scheme: str, port: int, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}/{quote(name.lstrip('/'))}"

    def http_url(self, name: str) -> str:
        """URL of the file ``name`` (relative to ``root``) over HTTP."""
        return self._url("http", self.http_port, name)

    def https_url(self, name: str) -> str:
        return self._url("https", self.https_port, name)

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("nginx is not started")
        return self._workdir

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    # ---- lifecycle

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("nginx is already running")
        binary = self._binary or find_nginx()
        if binary is None:
            raise NginxError("nginx not found (looked in /usr/sbin and on PATH)")
        info = _build_info(binary)
        if info is None:
            raise NginxError(f"{binary} -V failed; is it nginx?")
        version, configure = info
        if self.certfile is not None and "--with-http_ssl_module" not in configure:
            raise NginxError(f"{binary} was built without the SSL module")
        if not self.root.is_dir():
            raise NginxError(f"not a directory: {self.root}")

        if self._given_workdir is not None:
            self._workdir = Path(self._given_workdir).resolve()
            self._workdir.mkdir(parents=True, exist_ok=True)
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="segdl-nginx-"))
        try:
            # A free port may be taken between our probe and nginx's bind: try again then.
            for attempt in range(3):
                self._http_port = _free_port(self.host)
                self._https_port = _free_port(self.host) if self.certfile is not None else None
                if self._launch(binary, version, configure, last_try=attempt == 2):
                    return
        except BaseException:
            self.stop()
            raise

    def _launch(
        self, binary: str, version: tuple[int, ...], configure: str, *, last_try: bool
    ) -> bool:
        """Start nginx once; False if it lost a race for its port and should be retried."""
        workdir = self.workdir
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / "temp" / name).mkdir(parents=True, exist_ok=True)
        config = workdir / "nginx.conf"
        config.write_text(self._config(configure))
        self.error_log.write_text("")
        command = [binary, "-p", f"{workdir}/", "-c", str(config)]
        # -e (1.19.5+) sends the errors nginx meets before reading its configuration to our
        # log too, instead of the compiled-in path an ordinary user cannot write.
        if version >= (1, 19, 5):
            command += ["-e", str(self.error_log)]
        if self._output is not None:
            self._output.close()
        self._output = open(workdir / "nginx.out", "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        ports = [p for p in (self._http_port, self._https_port) if p is not None]
        while True:
            if self._process.poll() is not None:
                self._process.wait()
                self._process = None
                tail = self._log_tail()
                if "Address already in use" in tail and not last_try:
                    return False
                raise NginxError(f"nginx exited at start-up:\n{tail}")
            if all(self._accepts(port) for port in ports):
                return True
            if time.monotonic() > deadline:
                raise NginxError(
                    f"nginx did not listen within {self.startup_timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, limit: int = 4000) -> str:
        parts = []
        for path in (self.workdir / "nginx.out", self.error_log):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {path.name}\n{text[-limit:]}")
        return "\n".join(parts) or "(nginx logged nothing)"

    def _config(self, configure: str) -> str:
        workdir = self.workdir
        lines = [
            "daemon off;",
            "master_process on;",
            f"worker_processes {self.workers};",
            f"pid {_quote(workdir / 'nginx.pid')};",
            f"lock_file {_quote(workdir / 'nginx.lock')};",
            f"error_log {_quote(self.error_log)} warn;",
        ]
        if os.geteuid() == 0:
            # Workers would otherwise drop to "nobody", who cannot read a 0700 pytest tmpdir.
            lines.append("user root;")
        lines += [
            "events {",
            "    worker_connections 1024;",
            "    multi_accept on;",
            "}",
            "http {",
            "    types { }",
            "    default_type application/octet-stream;",
        ]
        if self.access_log and self.log_format is not None:
            lines += [
                f"    log_format segdl {_quote(self.log_format)};",
                f"    access_log {_quote(self.access_log_path)} segdl;",
            ]
        else:
            lines.append(
                f"    access_log {_quote(self.access_log_path) if self.access_log else 'off'};"
            )
        lines += [
            # Fast paths for benchmarks: sendfile for plain HTTP, big reads for TLS (which
            # cannot use sendfile without kernel TLS), long-lived keep-alive connections.
            "    sendfile on;",
            "    tcp_nopush on;",
            "    tcp_nodelay on;",
            "    output_buffers 2 512k;",
            "    keepalive_requests 10000;",
            "    keepalive_timeout 75s;",
        ]
        for module in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            directive = "client_body" if module == "body" else module
            if module != "body" and f"--without-http_{module}_module" in configure:
                continue
            lines.append(f"    {directive}_temp_path {_quote(workdir / 'temp' / module)};")
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines += [
            "    server {",
            f"        listen {host}:{self._http_port};",
        ]
        if self.certfile is not None and self.keyfile is not None:
            lines += [
                f"        listen {host}:{self._https_port} ssl;",
                f"        ssl_certificate {_quote(self.certfile)};",
                f"        ssl_certificate_key {_quote(self.keyfile)};",
                "        ssl_protocols TLSv1.2 TLSv1.3;",
                "        ssl_session_cache shared:segdl:1m;",
            ]
        lines += [
            "        server_name localhost;",
            f"        root {_quote(self.root)};",
        ]
        if self.limit_rate is not None:
            lines.append(f"        limit_rate {self.limit_rate};")
        lines += ["    }", "}", ""]
        return "\n".join(lines)

    def stop(self) -> None:
        """Stop nginx (fast shutdown), reap it, and remove a work directory we created."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            else:
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._http_port = None
        self._https_port = None

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NginxFactory(Protocol):
    """The type of the ``nginx_server`` test fixture: start an nginx serving ``root``."""

    def __call__(
        self,
        root: Path,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        limit_rate: str | None = None,
        workers: int = 1,
        access_log: bool = True,
        log_format: str | None = None,
    ) -> Nginx: ...
