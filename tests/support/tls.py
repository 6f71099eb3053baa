"""Certificates for TLS tests, made with trustme: a CA that signs a server certificate for
localhost, and a second CA that signs nothing we use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # signed the server certificate
    other_ca: Path  # a CA that signed nothing we use
    server_cert: Path  # SAN: localhost only, so 127.0.0.1 is a name it lacks
    server_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    # RSA rather than trustme's default ECDSA: the throwaway MariaDB serves the same files.
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    other_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    server = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    files = TlsFiles(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    other_ca.cert_pem.write_to_path(str(files.other_ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    return files
