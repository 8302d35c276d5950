"""The billing service as auth sees it: the billing user behind a new console account, the bonus
of a verified address, and the low-balance crossings auth mails."""
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

    async def create_user(self, name: str, reference: str, *, bonus: bool = True) -> int:
        """The user made for `reference` (made now, with the sign-up bonus unless `bonus` is
        false, or earlier); its id.

        Not retried here (the edge alone makes a call again, edge/retry.py): a failure fails
        the sign-up, and signing up again finds the user made for the same reference."""
        request = billing_pb2.CreateUserRequest(name=name, reference=reference)
        if not bonus:
            request.credits = 0
        return (await self._stub.CreateUser(request, timeout=RPC_TIMEOUT_S)).id

    async def grant_signup_bonus(self, user_id: int, reference: str) -> tuple[bool, int]:
        """(whether `user_id` has the bonus of `reference`, its micro-credits when it has).
        Idempotent by reference: a verification that failed here is followed again and asks
        for the same credit (not retried here, as above)."""
        request = billing_pb2.GrantSignupBonusRequest(user_id=user_id, reference=reference)
        reply = await self._stub.GrantSignupBonus(request, timeout=RPC_TIMEOUT_S)
        return reply.granted, reply.credits

    async def take_balance_alerts(self) -> list[billing_pb2.BalanceAlert]:
        reply = await self._stub.TakeBalanceAlerts(billing_pb2.TakeBalanceAlertsRequest(), timeout=RPC_TIMEOUT_S)
        return list(reply.alerts)
