"""The billing service as auth sees it: making the billing user behind a new console account."""
from __future__ import annotations

import asyncio

import grpc

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.common import peers
from services.common.mtls import GrpcTls

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
RPC_TIMEOUT_S = 10.0


class BillingPeer:
    def __init__(self, target: str, tls: GrpcTls) -> None:
        self._channel = peers.channel(target, "billing", tls)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def create_user(self, name: str, reference: str) -> int:
        """The user made for `reference` (made now, with the sign-up bonus, or earlier); its id."""
        request = billing_pb2.CreateUserRequest(name=name, reference=reference)
        # Idempotent by reference, so a retry after a transient failure cannot grant twice.
        for attempt in (0, 1):
            try:
                return (await self._stub.CreateUser(request, timeout=RPC_TIMEOUT_S)).id
            except grpc.aio.AioRpcError as exc:
                if attempt or exc.code() not in _TRANSIENT:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")
