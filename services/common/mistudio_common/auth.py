"""Who is calling: identities, their credentials, and the one check every server runs.

A caller proves who it is with a bearer token (``authorization: Bearer …``) or a client
certificate signed by the configured CA (its common name is the identity). Identities and
roles come from settings or a token file. With nothing configured a service serves loopback
only, and every caller there is the local user with every right (the no-setup local mode).
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from mistudio_common.errors import InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

TOKEN_METADATA_KEY = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
"""Health checks answer without credentials: container probes carry none."""


class Role(StrEnum):
    USER = "user"
    """Sees and controls only what it owns."""
    ADMIN = "admin"
    """Sees and controls every user's SAEs and jobs."""
    SERVICE = "service"
    """A miStudio service calling a peer: every right, including the store's writes."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.SERVICE)


LOCAL_IDENTITY = Identity("local", Role.SERVICE)
"""Every caller of a service that has no credentials configured (it binds loopback only)."""


class SecuritySettings(BaseSettings):
    """The credential settings every service shares (each under its own env prefix)."""

    tls_cert_file: Path | None = None
    """PEM certificate this service presents, as a server and as a client of its peers."""
    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""
    tls_ca_file: Path | None = None
    """PEM CA that signs client certificates (mTLS) and the peers' server certificates."""
    auth_tokens: SecretStr = SecretStr("")
    """Identities as comma-separated name:role:token entries (role: user, admin or service)."""
    auth_token_file: Path | None = None
    """Identities, one per line: name role token ('-' for a certificate-only identity)."""
    service_token: SecretStr = SecretStr("")
    """The token this service presents to its peers (a service identity in their tables)."""
    service_token_file: Path | None = None
    """A file holding service_token (e.g. a container secret)."""


@dataclass(frozen=True)
class Credentials:
    """The resolved security setup of one server: what it accepts, and how it calls peers."""

    identities: Mapping[str, Identity]
    """Identity name -> identity (roles for certificate holders too)."""
    tokens: Mapping[str, Identity]
    tls: ServerTls | None
    peer: PeerCredentials

    @property
    def configured(self) -> bool:
        """Whether anyone can authenticate: by token, or by a certificate the CA signed."""
        return bool(self.tokens) or (self.tls is not None and self.tls.client_ca is not None)


@dataclass(frozen=True)
class ServerTls:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    """When set, client certificates are verified (and required unless tokens are accepted)."""


@dataclass(frozen=True)
class PeerCredentials:
    """How a client proves itself and checks the server: all empty means plaintext loopback."""

    token: str = ""
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None


LOOPBACK_PEER = PeerCredentials()
"""No token, no TLS: how peers call each other in the local no-setup mode."""


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read {setting} {str(path)!r}: {error.strerror}",
            field=setting,
            fix=f"point {setting} at a readable file",
        ) from None


def _parse_identity(fields: list[str], where: str) -> tuple[Identity, str]:
    if len(fields) != 3 or not fields[0]:
        raise InvalidArgument(
            f"{where}: expected name, role and token",
            field=where,
            fix="write each identity as name:role:token (settings) or 'name role token' (file)",
        )
    name, role, token = fields
    if role not in {r.value for r in Role}:
        raise InvalidArgument(
            f"{where}: role {role!r} of {name!r} is not user, admin or service",
            field=where,
            fix="use one of the roles user, admin, service",
        )
    return Identity(name, Role(role)), token


def parse_identities(inline: str, file_lines: Iterable[str]) -> list[tuple[Identity, str]]:
    """(identity, token) pairs from the inline setting and the token file's lines."""
    entries = []
    for number, entry in enumerate(e.strip() for e in inline.split(",")):
        if entry:
            entries.append(_parse_identity(entry.split(":", 2), f"auth_tokens entry {number + 1}"))
    for number, line in enumerate(file_lines):
        text = line.strip()
        if text and not text.startswith("#"):
            entries.append(_parse_identity(text.split(), f"auth_token_file line {number + 1}"))
    return entries


def load_credentials(settings: SecuritySettings) -> Credentials:
    """Reads every configured file once, at start-up, so a bad setting fails the start."""
    lines = (
        _read(settings.auth_token_file, "auth_token_file").decode().splitlines()
        if settings.auth_token_file
        else []
    )
    pairs = parse_identities(settings.auth_tokens.get_secret_value(), lines)
    tokens = {token: identity for identity, token in pairs if token and token != "-"}
    cert = _read(settings.tls_cert_file, "tls_cert_file") if settings.tls_cert_file else None
    key = _read(settings.tls_key_file, "tls_key_file") if settings.tls_key_file else None
    if (cert is None) != (key is None):
        raise InvalidArgument(
            "tls_cert_file and tls_key_file must be set together",
            field="tls_key_file" if key is None else "tls_cert_file",
            fix="set both (the certificate and its private key) or neither",
        )
    ca = _read(settings.tls_ca_file, "tls_ca_file") if settings.tls_ca_file else None
    if cert is not None and ca is None and not tokens:
        raise InvalidArgument(
            "TLS is configured but no caller could authenticate: no tokens and no client CA",
            field="tls_ca_file",
            fix="set tls_ca_file (mutual TLS) or auth_tokens / auth_token_file",
        )
    service_token = settings.service_token.get_secret_value()
    if settings.service_token_file:
        service_token = _read(settings.service_token_file, "service_token_file").decode().strip()
    return Credentials(
        identities={identity.name: identity for identity, _ in pairs},
        tokens=tokens,
        tls=ServerTls(cert, key, ca) if cert is not None and key is not None else None,
        peer=PeerCredentials(token=service_token, ca=ca, cert=cert, key=key),
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, credentials: Credentials, host_setting: str = "host") -> None:
    """Refuses to serve other hosts without credentials; says so when serving loopback open."""
    if credentials.configured:
        if credentials.tls is None and not is_loopback(host):
            log.warning(
                "tokens are accepted over plaintext on a non-loopback interface",
                extra={"host": host, "fix": "set tls_cert_file, tls_key_file and tls_ca_file"},
            )
        return
    if not is_loopback(host):
        raise InvalidArgument(
            f"refusing to listen on {host!r} without authentication",
            field=host_setting,
            fix="set auth_tokens / auth_token_file or tls_cert_file + tls_key_file + tls_ca_file "
            "(see README 'Security'), or listen on 127.0.0.1",
        )
    log.info(  # INFO: the CLI's in-process stack runs this way for every local user
        "no credentials configured: serving loopback only, every caller is the local user",
        extra={"host": host},
    )


# -- resolving the caller ------------------------------------------------------------------

_CALLER: contextvars.ContextVar[Identity] = contextvars.ContextVar("mistudio_caller")


def current_caller() -> Identity:
    """The authenticated identity of the RPC being served (set by the server interceptor)."""
    try:
        return _CALLER.get()
    except LookupError:
        raise RuntimeError("current_caller() called outside an authenticated RPC") from None


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == TOKEN_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def resolve_identity(
    credentials: Credentials,
    metadata: Iterable[tuple[str, str | bytes]],
    certificate_names: Iterable[bytes],
) -> Identity:
    """The caller behind a request's token or verified client certificate.

    ``certificate_names`` are the common names gRPC verified against the CA (empty without one).
    """
    if not credentials.configured:
        return LOCAL_IDENTITY
    token = bearer_token(metadata)
    if token is not None:
        for known, identity in credentials.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return identity
        raise Unauthenticated(
            "the bearer token is not known to this service",
            field="authorization",
            fix="pass a token from the service's auth_tokens / auth_token_file",
        )
    for raw in certificate_names:
        name = raw.decode()
        return credentials.identities.get(name, Identity(name, Role.USER))
    raise Unauthenticated(
        "no credentials: this service needs a bearer token or a client certificate",
        field="authorization",
        fix="pass --token (or MISTUDIO_TOKEN), or a client certificate signed by its CA",
    )


def authorize(identity: Identity, method: str, service_only: frozenset[str]) -> None:
    if method in service_only and identity.role is not Role.SERVICE:
        raise PermissionDenied(
            f"{method.rsplit('/', 1)[-1]} is only for miStudio services, not {identity.name!r}",
            field="authorization",
            fix="this RPC is internal; use the export service's API instead",
        )


def can_see(owner: str, caller: Identity) -> bool:
    """Whether ``caller`` may see (and control) a resource owned by ``owner``."""
    return caller.sees_everything or owner == caller.name


def sae_owner(requested: str, caller: Identity) -> str | None:
    """Whose SAE a request addresses (an sae_id is unique per owner): a user's always its own
    (naming another is PERMISSION_DENIED, as in ``owner_for``); an admin or service names the
    owner, or gives none (None) to mean the only SAE with that id."""
    if caller.sees_everything:
        return requested or None
    return owner_for(requested, caller)


def owner_for(requested: str, caller: Identity) -> str:
    """The owner a new SAE or job gets: the caller, unless an admin or service names another.

    A user may repeat its own name in the request's ``owner`` field, but never name another.
    """
    if caller.sees_everything:
        return requested or caller.name
    if requested and requested != caller.name:
        raise PermissionDenied(
            f"owner {requested!r} is not the caller {caller.name!r}",
            field="owner",
            fix="leave owner empty: what you create belongs to the identity you authenticate as",
        )
    return caller.name


def bind_caller(identity: Identity) -> contextvars.Token[Identity]:
    return _CALLER.set(identity)


def unbind_caller(token: contextvars.Token[Identity]) -> None:
    _CALLER.reset(token)
