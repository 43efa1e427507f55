"""`python -m mistudio_common.healthcheck HOST:PORT [SERVICE] [--tls-ca PEM ...]`: exit 0 when
the server is SERVING.

Used by container health checks and by the demo to wait for services to come up. Health needs
no token; a TLS port needs the CA (and, for a port that requires client certificates, one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mistudio_common.auth import LOOPBACK_PEER, PeerCredentials
from mistudio_common.server import open_channel


def check(
    address: str, service: str = "", timeout: float = 3.0, peer: PeerCredentials = LOOPBACK_PEER
) -> bool:
    with open_channel(address, peer) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _pem(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mistudio_common.healthcheck")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("service", nargs="?", default="")
    parser.add_argument("--tls-ca", type=Path, help="CA of the server's certificate (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    args = parser.parse_args(argv)
    peer = PeerCredentials(ca=_pem(args.tls_ca), cert=_pem(args.tls_cert), key=_pem(args.tls_key))
    healthy = check(args.address, args.service, peer=peer)
    print("SERVING" if healthy else "NOT_SERVING")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
