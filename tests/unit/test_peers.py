"""Which failed calls go to another replica: only calls that are safe to repeat, only when the
failure was in transport, not a service's own answer, and only from the edge (edge/retry.py),
each try numbered so that billing can order them."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_status import rpc_status

from chatkore.v1 import auth_pb2, billing_pb2, errors_pb2, inference_pb2, inference_pb2_grpc
from edge import retry
from services.common import grpcserver, peers
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
    assert not retry.IDEMPOTENT - _methods()


def test_holds_and_charges_are_not_in_the_edges_list() -> None:
    # Only inference reserves and settles (mtls.py), and it makes each call once.
    assert not {"/chatkore.v1.Billing/Reserve", "/chatkore.v1.Billing/Settle"} & retry.IDEMPOTENT


@pytest.mark.parametrize("method", ["CreateUser", "TopUp", "CreateRedeemCodes", "Redeem"])
def test_calls_that_would_act_twice_are_not_repeated(method: str) -> None:
    assert f"/chatkore.v1.Billing/{method}" not in retry.IDEMPOTENT


def test_creating_keys_and_channels_is_not_repeated() -> None:
    assert "/chatkore.v1.Auth/CreateKey" not in retry.IDEMPOTENT
    assert "/chatkore.v1.Inference/CreateChannel" not in retry.IDEMPOTENT
    assert "/chatkore.v1.Inference/DeleteChannel" not in retry.IDEMPOTENT
    assert "/chatkore.v1.Inference/RelayStream" not in retry.IDEMPOTENT  # its reader retries (retry.first_event)


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
        self.reserved: list[billing_pb2.ReserveRequest] = []
        self.settled: list[billing_pb2.SettleRequest] = []

    async def Reserve(self, request, timeout=None):  # noqa: N802, ANN001, ANN201 - a stub's signature
        self.reserved.append(request)
        raise _Down()

    async def Settle(self, request, timeout=None):  # noqa: N802, ANN001, ANN201
        self.settled.append(request)
        return billing_pb2.Settlement(request_id=request.request_id, state="released")


def test_a_reserve_cut_short_is_not_repeated_and_releases_the_hold_it_may_have_placed_under_its_try() -> None:
    """billing may have committed a hold whose Reserve failed in transport: inference does not
    try again (the edge makes the whole call again as its next try) and releases it at once,
    naming its own try (the edge's next try elsewhere may have taken the hold over)."""
    stub = _BillingDown()

    async def run() -> None:
        peer = BillingPeer("127.0.0.1:1", GrpcTls("inference", insecure=True), 1.0)
        peer._stub = stub
        with pytest.raises(grpc.aio.AioRpcError):
            await peer.reserve(request_id="req_x", user_id=1, key_id=1, credit_limit=0, model="m",
                               prompt_tokens=1, max_tokens=1, choices=1, try_number=2)
        releases = set(peer._later)
        done, _ = await asyncio.wait(releases, timeout=10)
        assert done == releases and all(t.exception() is None for t in done)
        await peer.close()

    asyncio.run(run())
    assert [r.try_number for r in stub.reserved] == [2]
    assert [(s.request_id, s.status, s.try_number) for s in stub.settled] == [("req_x", "client_gone", 2)]


def test_numbering_a_try_copies_only_messages_that_carry_one() -> None:
    first = inference_pb2.RelayRequest(model="m", body=b"{}", try_number=1)
    assert retry.numbered(first, 1) is first  # the first try goes as built: no copy of the body
    second = retry.numbered(first, 2)
    assert second.try_number == 2 and first.try_number == 1 and second.body == first.body
    other = auth_pb2.AuthenticateRequest()
    assert retry.numbered(other, 3) is other


class _LosingInference(inference_pb2_grpc.InferenceServicer):
    """Relay: the first `lost` calls fail as a lost replica does (UNAVAILABLE, no detail)."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.tries: list[int] = []

    async def Relay(self, request, context):  # noqa: N802, ANN001, ANN201 - a servicer's signature
        self.tries.append(request.try_number)
        if len(self.tries) <= self.lost:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        return inference_pb2.RelayReply(body=b"{}")


async def _serve(servicer: inference_pb2_grpc.InferenceServicer) -> tuple[grpc.aio.Server, str]:
    # As every service serves: each method alone and on multiplexed streams (peers.channel's default).
    server, _mux = grpcserver.build(lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, s),
                                    authorize=False)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_the_edge_makes_a_lost_call_again_numbered_and_a_service_does_not() -> None:
    """Over real gRPC: the edge's channel repeats a Relay lost in transport as try 2, then 3; a
    service's channel (peers.channel without the edge's retry) makes it once."""

    async def run() -> tuple[list[int], list[int], grpc.StatusCode]:
        edge_side, service_side = _LosingInference(lost=2), _LosingInference(lost=1)
        servers = [await _serve(edge_side), await _serve(service_side)]
        tls = GrpcTls("edge", insecure=True)
        edge_channel = peers.channel(servers[0][1], "inference", tls, outer=[retry.RetryInterceptor()])
        service_channel = peers.channel(servers[1][1], "inference", tls)
        request = inference_pb2.RelayRequest(model="m", try_number=1)
        await inference_pb2_grpc.InferenceStub(edge_channel).Relay(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await inference_pb2_grpc.InferenceStub(service_channel).Relay(request, timeout=10)
        for channel in (edge_channel, service_channel):
            await channel.close()
        for server, _ in servers:
            await server.stop(None)
        return edge_side.tries, service_side.tries, lost.value.code()

    edge_tries, service_tries, code = asyncio.run(run())
    assert edge_tries == [1, 2, 3]
    assert service_tries == [1] and code == grpc.StatusCode.UNAVAILABLE


class _BreakingStream(inference_pb2_grpc.InferenceServicer):
    """RelayStream: the first call fails before its first event as a lost replica does."""

    def __init__(self) -> None:
        self.tries: list[int] = []

    async def RelayStream(self, request, context):  # noqa: N802, ANN001, ANN201 - a servicer's signature
        self.tries.append(request.try_number)
        if len(self.tries) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        yield inference_pb2.RelayEvent(chunk=b"{}")


def test_a_stream_lost_before_its_first_event_is_opened_again_as_the_next_try() -> None:
    async def run() -> tuple[list[int], object]:
        servicer = _BreakingStream()
        server, target = await _serve(servicer)
        channel = peers.channel(target, "inference", GrpcTls("edge", insecure=True),
                                outer=[retry.RetryInterceptor()])
        stub = inference_pb2_grpc.InferenceStub(channel)
        message = inference_pb2.RelayRequest(model="m", stream=True, try_number=1)
        opened = retry.Opened()
        first = await retry.first_event(lambda n: stub.RelayStream(retry.numbered(message, n), timeout=10), opened)
        await channel.close()
        await server.stop(None)
        return servicer.tries, first

    tries, first = asyncio.run(run())
    assert tries == [1, 2]
    assert isinstance(first, inference_pb2.RelayEvent) and first.chunk == b"{}"
