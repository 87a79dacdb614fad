"""Real components: nginx as the server, the segdl command as users run it, real aria2c.

Every test compares sha256 of the result with the served file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segdl.core.controlfile import ControlFile, ControlFileError
from segdl.core.trailer import unseal
from segdl.testing.nginx import Nginx, NginxFactory
from segdl.testing.tls import CertPair

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SEGDL = [sys.executable, "-m", "segdl"]


def make_file(root: Path, name: str, size: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def segdl_get(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEGDL, "get", *args], capture_output=True, text=True, timeout=120, env=env
    )


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def require_aria2c() -> str:
    binary = shutil.which("aria2c")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("aria2c is not installed, and CI=true forbids skipping")
        pytest.skip("aria2c is not installed")
    return binary


def test_https_with_self_signed_certificate(
    nginx_server: NginxFactory, tls_pair: CertPair, tmp_path: Path
) -> None:
    digest = make_file(tmp_path / "www", "model.safetensors", 48 * MIB + 17)
    nginx = nginx_server(tmp_path / "www", certfile=tls_pair.certfile, keyfile=tls_pair.keyfile)
    url = nginx.https_url("model.safetensors")
    out = tmp_path / "out"
    done = segdl_get(url, "-d", str(out), "--ca-certificate", str(tls_pair.certfile))
    assert done.returncode == 0, done.stderr
    assert sha(out / "model.safetensors") == digest
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]

    # Untrusted without the CA: a clear one-line error, exit 6, nothing written.
    other = tmp_path / "other"
    refused = segdl_get(url, "-d", str(other))
    assert refused.returncode == 6
    assert "certificate" in refused.stderr
    assert "Traceback" not in refused.stderr

    # SSL_CERT_FILE is honoured as well.
    env = {**os.environ, "SSL_CERT_FILE": str(tls_pair.certfile)}
    via_env = segdl_get(url, "-d", str(other), env=env)
    assert via_env.returncode == 0, via_env.stderr
    assert sha(other / "model.safetensors") == digest


def test_sigkill_three_times_then_resume(
    nginx_server: NginxFactory, tls_pair: CertPair, tmp_path: Path
) -> None:
    size = 96 * MIB + 12345
    digest = make_file(tmp_path / "www", "big.bin", size)
    nginx = nginx_server(
        tmp_path / "www", certfile=tls_pair.certfile, keyfile=tls_pair.keyfile, limit_rate="4m"
    )
    url = nginx.https_url("big.bin")
    out = tmp_path / "out"
    args = [url, "-d", str(out), "--ca-certificate", str(tls_pair.certfile), "-q"]
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([*SEGDL, "get", *args, "-c"])
        wait_for(out / "big.bin.part.aria2")
        time.sleep(rng.uniform(0.2, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # After each kill the state on disk is a valid aria2 control file, beside a partial
        # no model scanner would pick up.
        control = ControlFile.decode((out / "big.bin.part.aria2").read_bytes())
        assert control.total_length == size
        assert sorted(p.name for p in out.iterdir()) == ["big.bin.part", "big.bin.part.aria2"]
    assert kills == 3
    done = segdl_get(*args, "-c")
    assert done.returncode == 0, done.stderr
    assert sha(out / "big.bin") == digest
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]


def test_aria2c_partial_is_finished_by_segdl(nginx_server: NginxFactory, tmp_path: Path) -> None:
    aria2c = require_aria2c()
    size = 64 * MIB + 999
    digest = make_file(tmp_path / "www", "a.bin", size)
    nginx = nginx_server(tmp_path / "www", limit_rate="512k")
    url = nginx.http_url("a.bin")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [aria2c, "-q", "-x16", "-s16", "-k1M", "--auto-save-interval=1", "-d", str(out), url]
    )
    wait_for(out / "a.bin.aria2")
    time.sleep(1.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    control = ControlFile.decode((out / "a.bin.aria2").read_bytes())
    assert len([b for b in control.bitfield if b]) > 0 or control.in_flight
    # aria2c's partial sits at the model's name; segdl -c adopts it (moved to a.bin.part
    # while it finishes) and publishes it.
    done = segdl_get(url, "-d", str(out), "-c")
    assert done.returncode == 0, done.stderr
    assert sha(out / "a.bin") == digest
    assert sorted(p.name for p in out.iterdir()) == ["a.bin"]


def bodies_sent(nginx: Nginx) -> list[int]:
    """``$body_bytes_sent`` of every response in nginx's access log (combined format)."""
    lines = (nginx.workdir / "access.log").read_text().splitlines()
    return [int(line.split('"')[2].split()[1]) for line in lines]


def test_segdl_partial_is_finished_by_aria2c(nginx_server: NginxFactory, tmp_path: Path) -> None:
    """The README's recipe: a killed segdl download (NAME.part, NAME.part.aria2) finished by
    ``aria2c -c -d DIR -o NAME.part URL``; the next ``segdl get`` of the URL publishes it
    without fetching it again.  The folder then holds the model and nothing else."""
    aria2c = require_aria2c()
    size = 64 * MIB + 999
    digest = make_file(tmp_path / "www", "b.bin", size)
    nginx = nginx_server(tmp_path / "www", limit_rate="512k")
    url = nginx.http_url("b.bin")
    out = tmp_path / "out"
    control_file = out / "b.bin.part.aria2"
    proc = subprocess.Popen([*SEGDL, "get", url, "-d", str(out), "-q"])
    wait_for(control_file)
    # At 512 KiB/s a connection completes its first 1 MiB piece in about 2 s: kill once the
    # saved state holds a finished piece, so aria2c has one to trust.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlFileError, OSError):
            if any(ControlFile.decode(control_file.read_bytes()).bitfield):
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in out.iterdir()) == ["b.bin.part", "b.bin.part.aria2"]
    control, validators = unseal(control_file.read_bytes())
    assert any(control.bitfield)
    assert validators is not None  # segdl's trailer, which aria2c reads past
    done = subprocess.run(
        [aria2c, "-q", "-x16", "-s16", "-k1M", "-c", "-d", str(out), "-o", "b.bin.part", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # aria2c deleted the control file, trailer and all: no sidecar of segdl's is left.
    assert sorted(p.name for p in out.iterdir()) == ["b.bin.part"]
    assert sha(out / "b.bin.part") == digest
    served = len(bodies_sent(nginx))
    published = segdl_get(url, "-d", str(out), "-q")
    assert published.returncode == 0, published.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b.bin"]
    assert sha(out / "b.bin") == digest
    # Only the probe's byte was served: the complete partial was not fetched again.
    assert bodies_sent(nginx)[served:] == [1]
