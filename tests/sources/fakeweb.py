"""Small helpers the fake sites share: building answers for RangeServer hooks.

The fakes are written from reference/sources.md, not from segdl's resolvers: they share no
code with them (the warning in STYLE.md about parfive's fake sharing its client's bug).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from segdl.testing.rangeserver import Fault, RangeServer, StatusFault

__all__ = ["bearer", "check_clean", "html", "json_answer", "split_target", "text"]


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The path and the query (first value of each key) of a request target."""
    parts = urlsplit(target)
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credential of an ``Authorization`` field, as CivitAI reads it: the second word."""
    value = headers.get("authorization")
    if value is None:
        return None
    words = value.split(" ")
    return words[1] if len(words) > 1 else ""


def json_answer(
    status: int, value: object, *, headers: Mapping[str, str] | None = None
) -> StatusFault:
    return Fault.status(
        status,
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        body=json.dumps(value).encode(),
    )


def text(status: int, body: str, *, headers: Mapping[str, str] | None = None) -> StatusFault:
    return Fault.status(
        status,
        headers={"Content-Type": "text/plain; charset=utf-8", **(headers or {})},
        body=body.encode(),
    )


def html(status: int, body: str, *, headers: Mapping[str, str] | None = None) -> StatusFault:
    return Fault.status(
        status,
        headers={"Content-Type": "text/html; charset=utf-8", **(headers or {})},
        body=body.encode(),
    )


def check_clean(*servers: RangeServer) -> None:
    """A fake's own failures (a hook that raised) fail the test."""
    for server in servers:
        assert not server.errors, f"the fake server itself failed: {server.errors!r}"
