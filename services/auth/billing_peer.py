"""The billing service as auth sees it: making the billing user behind a new console account."""
from __future__ import annotations

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.common import peers
from services.common.mtls import GrpcTls

RPC_TIMEOUT_S = 10.0


class BillingPeer:
    def __init__(self, target: str, tls: GrpcTls) -> None:
        self._channel = peers.channel(target, "billing", tls)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def create_user(self, name: str, reference: str) -> int:
        """The user made for `reference` (made now, with the sign-up bonus, or earlier); its id.

        Not retried here (the edge alone makes a call again, edge/retry.py): a failure fails
        the sign-up, and signing up again finds the user made for the same reference."""
        request = billing_pb2.CreateUserRequest(name=name, reference=reference)
        return (await self._stub.CreateUser(request, timeout=RPC_TIMEOUT_S)).id
