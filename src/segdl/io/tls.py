"""TLS trust: the system store, ``SSL_CERT_FILE``/``SSL_CERT_DIR``, and ``--ca-certificate``."""

from __future__ import annotations

import ssl
from functools import cache

__all__ = ["client_context"]


@cache
def client_context(ca_certificate: str | None = None) -> ssl.SSLContext:
    """A verifying client context, shared by the control and data planes.

    ``create_default_context`` loads OpenSSL's default paths, which honour ``SSL_CERT_FILE``
    and ``SSL_CERT_DIR``; ``ca_certificate`` is trusted in addition, as aria2c's
    ``--ca-certificate`` is.
    """
    context = ssl.create_default_context()
    if ca_certificate:
        try:
            context.load_verify_locations(cafile=ca_certificate)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load CA certificate {ca_certificate!r}: {exc}") from exc
    # One ALPN choice: the data plane speaks HTTP/1.1 only.
    context.set_alpn_protocols(["http/1.1"])
    return context
