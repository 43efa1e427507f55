"""Reading the structured details of a failed call, as a client would."""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def details(error: grpc.RpcError) -> dict[str, Any]:
    """{"field_violations": [...], "precondition": [(subject, description)], "code": ...}."""
    call = cast(grpc.Call, error)
    status = rpc_status.from_call(call)
    found: dict[str, Any] = {"code": call.code(), "message": call.details() or ""}
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["fields"] = [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            found["precondition"] = [(v.subject, v.description) for v in failure.violations]
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            found["resource"] = info.resource_name
    return found
