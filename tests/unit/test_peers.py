"""Which failed calls go to another replica: only calls that are safe to repeat, and only when
the failure was in transport, not a service's own answer."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_status import rpc_status

from chatkore.v1 import auth_pb2, billing_pb2, errors_pb2, inference_pb2
from services.common import peers
from services.common.errors import Unavailable, status_of
from services.common.mtls import GrpcTls
from services.inference.billing_peer import BillingPeer


def _methods() -> set[str]:
    names = set()
    for module in (auth_pb2, billing_pb2, inference_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return names


def test_every_idempotent_method_exists() -> None:
    assert not peers.IDEMPOTENT - _methods()


@pytest.mark.parametrize("method", ["CreateUser", "TopUp", "CreateRedeemCodes", "Redeem"])
def test_calls_that_would_act_twice_are_not_repeated(method: str) -> None:
    assert f"/chatkore.v1.Billing/{method}" not in peers.IDEMPOTENT


def test_creating_keys_and_channels_is_not_repeated() -> None:
    assert "/chatkore.v1.Auth/CreateKey" not in peers.IDEMPOTENT
    assert "/chatkore.v1.Inference/CreateChannel" not in peers.IDEMPOTENT
    assert "/chatkore.v1.Inference/DeleteChannel" not in peers.IDEMPOTENT
    assert "/chatkore.v1.Inference/RelayStream" not in peers.IDEMPOTENT  # its reader retries (edge/sse.py)


def _error(code: grpc.StatusCode, trailing: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="x")


def test_a_broken_connection_is_a_transport_failure() -> None:
    assert peers.transport_failure(_error(grpc.StatusCode.UNAVAILABLE))


def test_a_services_own_unavailable_is_not() -> None:
    # An upstream that failed, or a database that is away, arrives with an ErrorDetail:
    # repeating it on another replica would only repeat the failure.
    status = Unavailable("The service is temporarily unavailable").to_status()
    assert not peers.transport_failure(_error(status.code, status.trailing_metadata))
    detail = errors_pb2.ErrorDetail(reason=errors_pb2.ErrorReason.Value("UPSTREAM_ERROR"), message="upstream down")
    upstream = status_of(grpc.StatusCode.UNAVAILABLE, detail)
    assert upstream.trailing_metadata[0][0] == rpc_status.GRPC_DETAILS_METADATA_KEY
    assert not peers.transport_failure(_error(upstream.code, upstream.trailing_metadata))


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_other_codes_are_not_repeated(code: grpc.StatusCode) -> None:
    assert not peers.transport_failure(_error(code))


class _Down(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")


class _BillingDown:
    """Reserve never answers; Settle records what it is asked."""

    def __init__(self) -> None:
        self.settled: list[billing_pb2.SettleRequest] = []

    async def Reserve(self, request, timeout=None):  # noqa: N802, ANN001, ANN201 - a stub's signature
        raise _Down()

    async def Settle(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        self.settled.append(request)
        return billing_pb2.Settlement(request_id=request.request_id, state="released")


def test_a_reserve_cut_short_releases_the_hold_it_may_have_placed_under_its_attempt() -> None:
    """billing may have committed a hold whose Reserve failed in transport: inference releases
    it at once, naming its own attempt (a retry elsewhere may have taken the hold over)."""
    stub = _BillingDown()

    async def run() -> None:
        peer = BillingPeer("127.0.0.1:1", GrpcTls("inference", insecure=True), 1.0)
        peer._stub = stub
        with pytest.raises(grpc.aio.AioRpcError):
            await peer.reserve(request_id="req_x", user_id=1, key_id=1, credit_limit=0, model="m",
                               prompt_tokens=1, max_tokens=1, choices=1, attempt="0000abcd")
        releases = set(peer._later)
        done, _ = await asyncio.wait(releases, timeout=10)
        assert done == releases and all(t.exception() is None for t in done)
        await peer.close()

    asyncio.run(run())
    assert [(s.request_id, s.status, s.attempt) for s in stub.settled] == [("req_x", "client_gone", "0000abcd")]


class _Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_a_retry_names_its_try_and_sorts_after_the_try_it_replaces_whatever_the_clock() -> None:
    from services.inference.servicer import _attempt

    details = grpc.aio.ClientCallDetails("/chatkore.v1.Inference/Relay", 5.0, None, None, None)
    assert peers._details(details, 5.0).metadata is None  # a first try adds nothing
    sent = peers._details(details, 5.0, 2).metadata
    assert (peers.TRY_HEADER, "2") in list(sent)
    assert peers.try_of(list(sent)) == 2
    assert peers.try_of([(peers.TRY_HEADER, "x")]) == peers.try_of([(peers.TRY_HEADER, "123")]) == 0
    retry = _attempt(_Context((peers.TRY_HEADER, "1")))  # made first: a replica whose clock is behind
    first = _attempt(_Context())
    assert first < retry and len(first) == len(retry) == 26
