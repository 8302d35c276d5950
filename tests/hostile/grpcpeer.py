"""An asyncio gRPC channel into a stack's service, presenting one of the stack's own certificates."""
from __future__ import annotations

import grpc

from services.common import peers
from services.common.mtls import GrpcTls
from tests.world import World


def channel(world: World, service: str, caller: str = "edge") -> grpc.aio.Channel:
    """As `caller` (by default the edge, which calls every public method) dials `service`."""
    return peers.channel(world.stack.target(service), service,
                         GrpcTls.from_dir(caller, world.stack.tls_dir(caller)))
