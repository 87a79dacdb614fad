"""Self-signed certificates for HTTPS tests (RangeServer, nginx, aria2c).

The certificate is its own trust anchor: give ``certfile`` to the server as its certificate
and to the client as its CA file. It is marked as a CA (OpenSSL and GnuTLS both accept a
self-signed CA certificate as a server certificate they trust) and carries the SANs clients
check — an IP SAN for addresses, a DNS SAN for names (RFC 6125 §6.4; the subject CN is not
consulted by modern clients).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "client_context", "make_self_signed", "server_context"]


@dataclass(frozen=True)
class CertPair:
    certfile: Path
    keyfile: Path


def make_self_signed(
    tmpdir: Path, hostnames: Sequence[str] = ("127.0.0.1", "localhost")
) -> CertPair:
    """Write a fresh key and self-signed certificate for ``hostnames`` into ``tmpdir``."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise RuntimeError(
            "make_self_signed needs the 'cryptography' package (pip install 'segdl[test]')"
        ) from exc
    if not hostnames:
        raise ValueError("at least one hostname is needed")

    # P-256: generated in microseconds, unlike RSA, and every TLS stack here speaks ECDSA.
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )

    tmpdir.mkdir(parents=True, exist_ok=True)
    certfile = tmpdir / "selfsigned-cert.pem"
    keyfile = tmpdir / "selfsigned-key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(key_pem)
    return CertPair(certfile=certfile, keyfile=keyfile)


def server_context(pair: CertPair) -> ssl.SSLContext:
    """A server-side context presenting ``pair``, speaking HTTP/1.1 over ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=pair.certfile, keyfile=pair.keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_context(pair: CertPair) -> ssl.SSLContext:
    """A verifying client context that trusts ``pair`` (and nothing else)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=pair.certfile)
    return context
