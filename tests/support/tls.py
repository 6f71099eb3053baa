"""Certificates for TLS tests, made with the openssl command-line tool: a CA that signs a
server certificate for localhost, and a second CA that signs nothing we use."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.prerequisites import prerequisite_missing


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # signed the server certificate
    other_ca: Path  # a CA that signed nothing we use
    server_cert: Path  # CN and SAN: localhost only, so 127.0.0.1 is a name it lacks
    server_key: Path


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Path:
    openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=iterable-sync {name}"),
    )
    return directory / f"{name}.pem"


def make_tls_files(directory: Path) -> TlsFiles:
    if shutil.which("openssl") is None:
        prerequisite_missing("the openssl command-line tool is not installed")
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    (directory / "server.ext").write_text(
        "subjectAltName = DNS:localhost\n"
        "basicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
    )
    openssl(
        directory,
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key"),
        *("-out", "server.csr", "-subj", "/CN=localhost"),
    )
    openssl(
        directory,
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-sha256", "-extfile", "server.ext"),
        *("-out", "server.pem"),
    )
    return TlsFiles(ca, other_ca, directory / "server.pem", directory / "server.key")
