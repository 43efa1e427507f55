"""Transient faults are weather: calls and jobs wait them out, up to a configured patience.

A peer that is restarting, a database that is down for a few seconds or an object store that
drops connections all surface as :class:`Unavailable` (permanent problems never do: they are
INVALID_ARGUMENT, FAILED_PRECONDITION or INTERNAL). Whoever retries asks
:func:`is_transient`, waits :meth:`Patience.delays` (exponential backoff, capped) and gives up
once the fault has lasted longer than the patience, with the last error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict, TypeVar

from mistudio_common.errors import Unavailable

T = TypeVar("T")

DEFAULT_PATIENCE_SECONDS = 600.0
"""How long a job waits out an unreachable peer, database or object store before it fails."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, Unavailable)


@dataclass(frozen=True)
class Patience:
    seconds: float = DEFAULT_PATIENCE_SECONDS
    first_delay: float = 0.25
    max_delay: float = 10.0

    def delays(self) -> Iterator[float]:
        """Backoff delays whose sum stays within ``seconds``; ends when patience runs out."""
        spent, delay = 0.0, self.first_delay
        while spent < self.seconds:
            step = min(delay, self.max_delay, self.seconds - spent)
            yield step
            spent += step
            delay *= 2


def call_with_patience(
    call: Callable[[], T],
    patience: Patience,
    sleep: Callable[[float], bool | None] = time.sleep,
) -> T:
    """``call()``, retried while it fails transiently; ``sleep`` returning True stops early
    (a job asked to stop), and the last error is raised."""
    delays = patience.delays()
    while True:
        try:
            return call()
        except Unavailable:
            delay = next(delays, None)
            if delay is None or sleep(delay):
                raise


PEER_CALL_SECONDS = 60.0
"""How long a peer may take to answer one unary call once it is reachable."""


@dataclass(frozen=True)
class PeerWait:
    """How a service calls its peers: a call made while a peer is starting or restarting waits
    for it (gRPC ``wait_for_ready``) up to the fault patience, then has ``call_seconds`` to
    answer, so a restart costs a delay instead of a failed job."""

    patience_seconds: float = DEFAULT_PATIENCE_SECONDS
    call_seconds: float = PEER_CALL_SECONDS

    @property
    def call_timeout(self) -> float:
        """The deadline of one unary (or short streaming) call, the wait for the peer included."""
        return self.patience_seconds + self.call_seconds

    def call_options(self) -> CallOptions:
        """Keyword arguments of a bounded gRPC call: wait for the peer, within the deadline."""
        return CallOptions(timeout=self.call_timeout, wait_for_ready=True)


class CallOptions(TypedDict):
    timeout: float
    wait_for_ready: bool


DEFAULT_PEER_WAIT = PeerWait()
