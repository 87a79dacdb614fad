"""Real proxy servers for tests: tinyproxy and squid (HTTP, CONNECT), microsocks (SOCKS5).

Each runs from a config written into a private directory, listens on a free 127.0.0.1 port
and makes its own outgoing connections from a loopback address of its own (``127.0.0.2``…),
so an origin server that records its clients' addresses tells a proxied connection from a
direct one.  Each keeps a log that tests read: tinyproxy's ``Connect`` log, squid's
``access.log``, microsocks' standard output.

Usage::

    with Tinyproxy(tmp_path, credentials=("alice", "s3cret")) as proxy:
        ... download through proxy.url ...
        assert "CONNECT 127.0.0.1:…" in proxy.log_text()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["Microsocks", "ProxyError", "ProxyProcess", "Squid", "Tinyproxy", "find_program"]

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class ProxyError(RuntimeError):
    """The proxy could not be started."""


def find_program(name: str) -> str | None:
    """*name* on PATH or in /usr/sbin (squid lives there)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ProxyProcess:
    """A proxy in a child process; stopped (and reaped) on exit from the ``with`` block."""

    program = ""
    scheme = "http"

    def __init__(
        self,
        workdir: Path,
        *,
        outgoing: str,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.outgoing = outgoing
        self.credentials = credentials
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._output = self.workdir / "output.log"

    # -- what tests use

    @property
    def url(self) -> str:
        """The proxy URL, with the credentials when it has some."""
        userinfo = ""
        if self.credentials is not None:
            user, password = self.credentials
            userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"{self.scheme}://{userinfo}127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """What the proxy logged about the connections it made."""
        raise NotImplementedError

    # -- lifecycle

    def argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the config files."""

    def start(self) -> None:
        binary = find_program(self.program)
        if binary is None:
            raise ProxyError(f"{self.program} is not installed")
        self.prepare()
        with self._output.open("wb") as output:
            self._process = subprocess.Popen(
                self.argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ProxyError(f"{self.program} exited at start: {self._tail()}")
            if self._accepts():
                return
            time.sleep(0.05)
        self.stop()
        raise ProxyError(f"{self.program} did not listen within {STARTUP_TIMEOUT:g} s")

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def _tail(self, limit: int = 2000) -> str:
        try:
            return self._output.read_text("utf-8", "replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Tinyproxy(ProxyProcess):
    """tinyproxy: HTTP forwarding and CONNECT, optional Basic auth (``BasicAuth``);
    *connect_ports*, when given, are the only ports it opens tunnels to (others: 403)."""

    program = "tinyproxy"

    def __init__(
        self,
        workdir: Path,
        *,
        outgoing: str = "127.0.0.2",
        credentials: tuple[str, str] | None = None,
        connect_ports: tuple[int, ...] = (),
    ) -> None:
        super().__init__(workdir, outgoing=outgoing, credentials=credentials)
        self.connect_ports = connect_ports

    def prepare(self) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            f"Bind {self.outgoing}",
            "Timeout 60",
            f'LogFile "{self.workdir / "tinyproxy.log"}"',
            "LogLevel Connect",
            f'PidFile "{self.workdir / "tinyproxy.pid"}"',
            "MaxClients 100",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        if self.credentials is not None:
            lines.append(f"BasicAuth {self.credentials[0]} {self.credentials[1]}")
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        (self.workdir / "tinyproxy.conf").write_text("\n".join(lines) + "\n")

    def argv(self, binary: str) -> list[str]:
        return [binary, "-d", "-c", str(self.workdir / "tinyproxy.conf")]

    def log_text(self) -> str:
        path = self.workdir / "tinyproxy.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


class Squid(ProxyProcess):
    """squid: HTTP forwarding and CONNECT; Basic auth through ``basic_ncsa_auth`` and an
    htpasswd file (``$apr1$`` hashes made with ``openssl passwd``)."""

    program = "squid"
    helper = "/usr/lib/squid/basic_ncsa_auth"

    def __init__(
        self,
        workdir: Path,
        *,
        outgoing: str = "127.0.0.3",
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, outgoing=outgoing, credentials=credentials)

    def prepare(self) -> None:
        # squid started as root works as the "proxy" user: its directory must be open to it
        # (and so must the directories above it: make it with tempfile.mkdtemp in /tmp).
        os.chmod(self.workdir, 0o777)
        lines = [
            f"http_port 127.0.0.1:{self.port}",
            f"pid_filename {self.workdir / 'squid.pid'}",
            f"cache_log {self.workdir / 'cache.log'}",
            f"access_log stdio:{self.workdir / 'access.log'} squid",
            "cache deny all",
            "cache_mem 4 MB",
            f"coredump_dir {self.workdir}",
            f"tcp_outgoing_address {self.outgoing}",
            "shutdown_lifetime 0 seconds",
            "netdb_filename none",
            "via off",
            "forwarded_for delete",
        ]
        if self.credentials is not None:
            user, password = self.credentials
            hashed = subprocess.run(
                ["openssl", "passwd", "-apr1", password],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            passwd = self.workdir / "passwd"
            passwd.write_text(f"{user}:{hashed}\n")
            os.chmod(passwd, 0o644)
            lines += [
                f"auth_param basic program {self.helper} {passwd}",
                "auth_param basic realm segdl-test",
                "acl authed proxy_auth REQUIRED",
                "http_access allow authed",
            ]
        else:
            lines.append("http_access allow localhost")
        lines.append("http_access deny all")
        (self.workdir / "squid.conf").write_text("\n".join(lines) + "\n")

    def argv(self, binary: str) -> list[str]:
        return [binary, "-N", "-f", str(self.workdir / "squid.conf")]

    def log_text(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


class Microsocks(ProxyProcess):
    """microsocks: SOCKS5, optional user/password (RFC 1929); logs each connection it makes."""

    program = "microsocks"
    scheme = "socks5h"

    def __init__(
        self,
        workdir: Path,
        *,
        outgoing: str = "127.0.0.4",
        credentials: tuple[str, str] | None = None,
        scheme: str = "socks5h",
    ) -> None:
        super().__init__(workdir, outgoing=outgoing, credentials=credentials)
        self.scheme = scheme

    def argv(self, binary: str) -> list[str]:
        argv = [binary, "-i", "127.0.0.1", "-p", str(self.port), "-b", self.outgoing]
        if self.credentials is not None:
            argv += ["-u", self.credentials[0], "-P", self.credentials[1]]
        return argv

    def log_text(self) -> str:
        return self._tail(limit=1_000_000)
