"""How exactly does each tool hold a bandwidth limit?  segdl vs aria2c vs curl, one run.

    python benchmarks/limit_accuracy.py [--rates 4M,16M] [--seconds 20] [--dest /dev/shm]

nginx (Debian's, unlimited) serves a file of ``rate × seconds`` bytes; each tool downloads it
with its own overall limit (segdl ``--max-overall-download-limit``, aria2c the same option,
curl ``--limit-rate``); the achieved rate is size / wall time, start-up included, and the
table shows its deviation from the limit.  Every result is sha256-checked.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segdl.core.sizes import parse_size
from segdl.testing.nginx import Nginx


def tools(url: str, out: Path, rate: str) -> dict[str, list[str]]:
    found = {
        "segdl native -x16": [
            sys.executable,
            "-m",
            "segdl",
            "get",
            url,
            "-d",
            str(out),
            "-q",
            f"--max-overall-download-limit={rate}",
        ],
    }
    if shutil.which("aria2c"):
        found["aria2c -x16"] = [
            "aria2c",
            "-q",
            "-x16",
            "-s16",
            "-k1M",
            "-d",
            str(out),
            f"--max-overall-download-limit={rate}",
            url,
        ]
    if shutil.which("curl"):
        found["curl"] = ["curl", "-sS", "--limit-rate", rate, "-o", str(out / "file.bin"), url]
    return found  # fmt: skip


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rates", default="4M,16M")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dest", default="/dev/shm")
    args = parser.parse_args()
    print("| limit | tool | seconds | achieved MiB/s | deviation |")
    print("|---|---|---:|---:|---:|")
    for rate_text in args.rates.split(","):
        rate = parse_size(rate_text)
        size = int(rate * args.seconds)
        with tempfile.TemporaryDirectory(dir=args.dest) as tmp, tempfile.TemporaryDirectory() as w:
            root, out = Path(tmp) / "www", Path(tmp) / "out"
            root.mkdir()
            data = os.urandom(size)
            (root / "file.bin").write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            del data
            with Nginx(root, workers=2, access_log=False, workdir=Path(w) / "nginx") as ng:
                for name, argv in tools(ng.http_url("file.bin"), out, rate_text).items():
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    start = time.monotonic()
                    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                    wall = time.monotonic() - start
                    if sha256_of(out / "file.bin") != digest:
                        raise SystemExit(f"{name}: wrong content")
                    achieved = size / wall
                    print(
                        f"| {rate_text} | {name} | {wall:.2f} | {achieved / 2**20:.2f} | "
                        f"{(achieved / rate - 1) * 100:+.1f}% |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
