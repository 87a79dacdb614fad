"""What a SIGKILL loses: the control file keeps the pieces in flight (their 16 KiB blocks), so
a resume fetches none of the blocks it recorded, and each range starts again exactly where
its saved prefix ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio
from support import claimed_ranges, expect_exact, read_control, refetched

import segdl
from segdl.core.controlfile import BLOCK_LENGTH
from segdl.testing.rangeserver import RangeServer, Resource

MIB = 1024 * 1024
BODY = os.urandom(8 * MIB + 12345)


def in_flight_blocks(target: Path) -> int:
    """Blocks the control file records inside pieces that are not complete."""
    control = read_control(target)
    if control is None:
        return 0
    return sum(piece.completed_prefix() // BLOCK_LENGTH for piece in control.in_flight)


def test_a_kill_after_in_flight_blocks_were_saved_loses_none_of_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = out / "f.bin.part"  # the partial: the model's name only once verified
    # Slow enough that every connection is inside its first piece for seconds.
    with RangeServer(rate_limit=96 * 1024) as server:
        server.add("/f.bin", Resource(body=BODY))
        url = server.url("/f.bin")
        argv = [sys.executable, "-m", "segdl", "get", url, "-d", str(out), "-q", "-x4", "-s4"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            # Killed once the saved state holds blocks of pieces still in flight.
            while in_flight_blocks(target) < 8:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "no piece in flight was ever saved"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
            assert process.stderr is not None
            process.stderr.close()
        control = read_control(target)
        assert control is not None
        assert control.in_flight, "the saved state had lost its pieces in flight"
        claimed = claimed_ranges(control)
        # What the saved state claims is on disk, byte for byte.
        data = target.read_bytes()
        for start, end in claimed:
            assert data[start:end] == BODY[start:end]
        before = len(server.requests)
        server.rate_limit = None
        trio.run(segdl.download, url, out)
        # No claimed byte asked for again, and every in-flight piece continued at the end of
        # its saved prefix.
        assert refetched(server, before, claimed) == []
        resumed_starts = {
            int(r.range.split("=")[1].split("-")[0])
            for r in server.requests[before:]
            if r.range is not None
        }
        for piece in control.in_flight:
            assert piece.index * control.piece_length + piece.completed_prefix() in resumed_starts
    expect_exact(out / "f.bin", BODY)
