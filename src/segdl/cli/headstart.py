"""``segdl get URL``'s head start: the first request sent while the rest of segdl loads.

Python, trio and httpx take a few tenths of a second to import on a slow machine; a plain
URL's first request (its probe, on a data connection) needs none of them.  So right after
the command line is read, the request goes out in a thread, with the other connections
opening beside it (:func:`segdl.engine.early.begin_head_start`); the download's flow takes
them over when it gets there, if they are what it would have begun itself.

Only for what surely is a direct URL to a usable directory: a site's URL is resolved on the
site first, a directory that cannot be written is refused before any request.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from ..core.headers import MAX_PARTIAL_NAME_BYTES, choose_filename, sanitize_filename
from ..core.urls import HttpURL
from ..engine.connections import open_connection
from ..engine.early import begin_head_start, opening_ranges
from ..engine.options import Options
from ..errors import DownloadError
from ..io.files import check_writable_dir
from ..sources.sitehosts import may_be_a_site

__all__ = ["begin"]


def begin(
    args: argparse.Namespace, options: Options, environ: Mapping[str, str] = os.environ
) -> None:
    """Send the first request of ``segdl get URL`` now, when the download is one plain URL."""
    if args.input_file or len(args.urls) != 1 or args.engine not in ("native", "single"):
        return
    text = args.urls[0]
    if may_be_a_site(text, environ):
        return
    try:
        url = HttpURL.parse(text)
        directory = Path(args.dir)
        check_writable_dir(directory)  # the flow does it again; refused here, nothing is sent
    except DownloadError:
        return
    limit = MAX_PARTIAL_NAME_BYTES
    name = sanitize_filename(args.out, max_bytes=limit) if args.out else None
    ahead = 0 if args.engine == "single" else options.max_connections - 1
    guess = directory / (name or choose_filename(None, url, max_bytes=limit))
    ranges = opening_ranges(guess, options.piece_length, ahead)
    begin_head_start(
        url, dict(options.headers), options, connect=open_connection, ranges=ranges, ahead=ahead
    )
