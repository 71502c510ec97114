"""Throw-away certificates for a TLS Kafka broker in tests, made with openssl and keytool.

Everything is written to a folder the caller gives (a pytest temporary
directory), never into the repository:

- ca.pem: the test CA (its key is deleted once used), which signs the broker's and the client's certificates;
- broker.p12: the broker's key and certificate (SAN IP:127.0.0.1 and DNS:localhost) with the
  CA, a PKCS12 keystore for Kafka;
- truststore.p12: the CA, for the broker to check client certificates (mutual TLS);
- client.pem / client.key: a client certificate signed by the CA;
- rogue-ca.pem: another CA, which signed nothing the broker holds: a client trusting only it
  must refuse the broker.

The store password is random per set. Keys are RSA 2048, valid for two days.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class ToolMissing(RuntimeError):
    """openssl or keytool is not on PATH."""


@dataclass(frozen=True)
class TlsFiles:
    folder: Path
    ca: Path
    keystore: Path
    truststore: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    store_password: str = field(repr=False)


def _run(*cmd: str, cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} is not on PATH (the TLS broker's certificates are made with openssl and keytool)")
    return path


def _ca(openssl: str, folder: Path, name: str, subject: str) -> None:
    _run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", subject,
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=folder)


def _signed(openssl: str, folder: Path, name: str, subject: str, extensions: str) -> None:
    """name.key and name.pem, signed by ca.pem."""
    (folder / f"{name}.ext").write_text(extensions)
    _run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", f"{name}.key", "-out", f"{name}.csr",
         "-subj", subject, cwd=folder)
    _run(openssl, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-sha256", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)


def make(folder: Path) -> TlsFiles:
    """Write a CA, a broker keystore, a truststore, a client certificate and a rogue CA into `folder`."""
    openssl, keytool = _tool("openssl"), _tool("keytool")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    _ca(openssl, folder, "ca", "/CN=otrules test CA")
    _ca(openssl, folder, "rogue-ca", "/CN=otrules rogue CA")
    _signed(openssl, folder, "broker", "/CN=localhost",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _signed(openssl, folder, "client", "/CN=otrules-client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n")
    _run(openssl, "pkcs12", "-export", "-name", "broker", "-in", "broker.pem", "-inkey", "broker.key",
         "-certfile", "ca.pem", "-out", "broker.p12", "-passout", f"pass:{password}", cwd=folder)
    _run(keytool, "-importcert", "-noprompt", "-alias", "otrules-test-ca", "-file", "ca.pem",
         "-keystore", "truststore.p12", "-storetype", "PKCS12", "-storepass", password, cwd=folder)
    for leftover in ("ca.key", "rogue-ca.key", "broker.key", "broker.csr", "client.csr", "ca.srl"):
        (folder / leftover).unlink(missing_ok=True)  # nothing else needs them
    return TlsFiles(folder, folder / "ca.pem", folder / "broker.p12", folder / "truststore.p12",
                    folder / "client.pem", folder / "client.key", folder / "rogue-ca.pem", password)
