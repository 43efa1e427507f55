"""The id of a dashboard computation, derived from the request id its client gives.

Deterministic, so a retried start finds its computation even after a restart, and a client
(the export) can name the computation in its own checkpoint before it asks for it: whoever
later cancels the client's job cancels that computation, even if the asker crashed between
asking and hearing back.
"""

from __future__ import annotations

import hashlib
import re

_FORM = re.compile(r"cmp-[0-9a-f]{24}")


def computation_id_for(request_id: str) -> str:
    return "cmp-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def is_computation_id(job_id: str) -> bool:
    """Whether some request id could give ``job_id`` (and the id is safe as a file name)."""
    return _FORM.fullmatch(job_id) is not None
