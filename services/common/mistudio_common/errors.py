"""Domain errors shared by every service.

Each error names what is wrong (``field``) and how to fix it (``fix``); the gRPC layer maps
the class to a status code in exactly one place (``mistudio_common.grpc_errors``), so domain
code never imports grpc.
"""

from __future__ import annotations


class MistudioError(Exception):
    """Base class: a message, the offending field or resource, and a remediation hint."""

    def __init__(self, message: str, *, field: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class InvalidArgument(MistudioError):
    """The request itself is malformed: a bad field, shape, value or file."""


class NotFound(MistudioError):
    """A referenced resource (SAE, job, feature, file) does not exist."""

    def __init__(
        self, message: str, *, resource_type: str = "", resource_name: str = "", fix: str = ""
    ) -> None:
        super().__init__(message, field=resource_name, fix=fix)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(MistudioError):
    """A resource with the same identity is already stored."""


class FailedPrecondition(MistudioError):
    """The request is well-formed but the system is not in a state to serve it.

    ``violations`` lists (subject, description) pairs: what is missing and how to get it.
    """

    def __init__(
        self,
        message: str,
        *,
        violations: list[tuple[str, str]] | None = None,
        field: str = "",
        fix: str = "",
    ) -> None:
        super().__init__(message, field=field, fix=fix)
        self.violations = violations or []


class ResourceExhausted(MistudioError):
    """Out of memory, disk or quota even after the service's own fallbacks."""


class Cancelled(MistudioError):
    """The operation was cancelled by a client."""


class Unauthenticated(MistudioError):
    """The caller presented no credentials, or ones this service does not know."""


class PermissionDenied(MistudioError):
    """The caller is known but its role may not make this call."""


class Unavailable(MistudioError):
    """A peer service, the database or the object store cannot be reached; retrying may help
    (running jobs wait it out, see ``mistudio_common.retry``)."""


class Internal(MistudioError):
    """A bug: the service cannot say more than a reference into its log; retrying won't help."""
