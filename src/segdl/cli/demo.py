"""``segdl demo``: serve a generated file from an embedded local server and download it.

Shows the whole path on a fresh machine with no network: the local server (with a
per-connection speed limit, as CDNs have) serves a deterministic file, segdl downloads it
with 16 connections and a live progress bar, and the result is compared byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

from ..api import download_sync
from ..core.events import Event
from ..core.sizes import parse_size
from ..engine.options import Options
from ..io import files, records
from ..testing.rangeserver import RangeServer, Resource
from .progressbar import ProgressBar, format_bytes

NAME = "demo-model.safetensors"


def generated_file(size: int) -> bytes:
    # Random bytes: nothing a transfer bug could reproduce by accident.
    return os.urandom(size)


def run_demo(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.size)
        rate = parse_size(args.rate)
    except ValueError as exc:
        print(f"segdl: error: {exc}", file=sys.stderr)
        return 28
    if size > 4 * 1024**3:
        print("segdl: error: the demo file is held in memory: at most 4G", file=sys.stderr)
        return 28
    directory = Path(args.dir)
    target = directory / NAME
    # A fresh download every time: no earlier file, partial or record of it.
    target.unlink(missing_ok=True)
    files.discard(files.partial_path(target))
    records.forget_record(target)
    print(f"Generating a {format_bytes(size)} file…", flush=True)
    body = generated_file(size)
    expected = hashlib.sha256(body).hexdigest()
    with RangeServer(rate_limit=rate or None) as server:
        server.add(
            "/models/demo-model.safetensors",
            Resource(
                body=body, content_disposition='attachment; filename="demo-model.safetensors"'
            ),
        )
        url = server.url("/models/demo-model.safetensors")
        print(f"Local server: {url} (each connection limited to {format_bytes(rate)}/s)")
        bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None

        def on_event(event: Event) -> None:
            if bar is not None:
                bar.handle(1, event)
            elif event.type in ("started", "success"):
                print(event.to_dict(), flush=True)

        started = time.monotonic()
        result = download_sync(
            url, directory, options=Options(compute_sha256=True), on_event=on_event
        )
        elapsed = time.monotonic() - started
        # Data connections only: the 1-byte probe has a connection of its own.
        connections = len(
            {r.connection_id for r in server.requests if r.range not in (None, "bytes=0-0")}
        )
    ok = result.sha256 == expected
    print(
        f"Downloaded {result.path}: {format_bytes(result.size)} in {elapsed:.1f} s "
        f"({result.size / elapsed / 1024**2:.1f} MiB/s over {connections} connections); "
        f"sha256 {'matches' if ok else 'DOES NOT MATCH'} the served file."
    )
    return 0 if ok else 32
