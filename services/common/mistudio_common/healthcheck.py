"""`python -m mistudio_common.healthcheck HOST:PORT [SERVICE]`: exit 0 when the server is SERVING.

Used by container health checks and by the demo to wait for services to come up.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m mistudio_common.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    service = sys.argv[2] if len(sys.argv) > 2 else ""
    healthy = check(sys.argv[1], service)
    print("SERVING" if healthy else "NOT_SERVING")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
