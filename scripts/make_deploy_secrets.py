"""Writes the secret files deploy/docker-compose.yml mounts: a private CA, a certificate per
service, and the identity (token) file with fresh random tokens.

    python scripts/make_deploy_secrets.py deploy/secrets --user alice --admin root

Needs the `cryptography` package (in the dev extras). Bring your own PKI instead by putting
PEM files with the same names in the folder. Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("store", "compute", "export")
"""Each gets <name>.pem and <name>.key; its hostname on the compose network is its name."""
CALLERS = ("compute", "export")
"""Services that call peers, each with a <name>_token file."""
VALID_DAYS = 825


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    with open(path, "xb") as f:  # "x": never replace a secret already handed out
        f.write(data)
    path.chmod(mode)


class Authority:
    """A private CA writing PEM files under ``folder`` (ca.pem, and what ``issue`` signs)."""

    def __init__(self, folder: Path, name: str = "miStudio Export CA", days: int = VALID_DAYS):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / "ca.pem"
        _write_new(self.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self._days))
        )

    def issue(self, common_name: str) -> Issued:
        """Server and client certificate for ``common_name`` (also valid for localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.DNSName(common_name),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        issued = Issued(self.folder / f"{common_name}.pem", self.folder / f"{common_name}.key")
        _write_new(issued.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_new(issued.key, _pem_key(key))
        return issued


def make_secrets(folder: Path, users: list[str], admins: list[str]) -> dict[str, str]:
    """Writes every file; returns the tokens by identity name (to hand to their holders)."""
    authority = Authority(folder)
    for service in SERVICES:
        authority.issue(service)
    roles = {**dict.fromkeys(users, "user"), **dict.fromkeys(admins, "admin")}
    roles.update(dict.fromkeys(SERVICES, "service"))
    tokens = {name: secrets.token_urlsafe(32) for name in roles}
    lines = ["# name role token (mounted as /run/secrets/tokens)"]
    lines += [f"{name} {role} {tokens[name]}" for name, role in roles.items()]
    _write_new(folder / "tokens", ("\n".join(lines) + "\n").encode())
    for service in CALLERS:
        _write_new(folder / f"{service}_token", tokens[service].encode())
    return tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write (e.g. deploy/secrets)")
    parser.add_argument("--user", action="append", default=[], help="a user identity (repeat)")
    parser.add_argument("--admin", action="append", default=[], help="an admin identity (repeat)")
    args = parser.parse_args(argv)
    try:
        tokens = make_secrets(args.folder, args.user, args.admin)
    except FileExistsError as error:
        print(f"error: {error.filename} exists; remove the folder to start over", file=sys.stderr)
        return 2
    for name in [*args.user, *args.admin]:
        print(f"{name}: MISTUDIO_TOKEN={tokens[name]}")
    print(f"wrote {args.folder}/ (keep it private: it holds the CA key and every token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
