"""A pod that reaches a service's port: without chatkore's CA, or with the wrong process's
certificate, it can neither top up nor hold nor relay. Every call goes to the session stack."""
from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatkore.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    mux_pb2,
)
from services.common import mtls
from services.common.mtls import GrpcTls
from tests.world import World
from tools import pki


def _topup(uid: int) -> billing_pb2.TopUpRequest:
    return billing_pb2.TopUpRequest(user_id=uid, credits=1_000_000_000, reference="steal-" + secrets.token_hex(4))


def _reserve(uid: int) -> billing_pb2.ReserveRequest:
    return billing_pb2.ReserveRequest(request_id="req_" + secrets.token_hex(8), user_id=uid, key_id=1,
                                      model="gpt-3.5-turbo", prompt_tokens=10, max_completion_tokens=10, choices=1)


def _unchanged(w: World, uid: int) -> None:
    assert (w.balance(uid), w.held(uid)) == (5, 0)


def test_a_plaintext_client_is_refused_and_changes_nothing(world: World) -> None:
    w = world
    uid = w.user(credits=5)["id"]
    for service in ("billing", "auth", "inference"):
        with grpc.insecure_channel(w.stack.target(service)) as channel:
            with pytest.raises(grpc.RpcError) as err:
                if service == "billing":
                    billing_pb2_grpc.BillingStub(channel).TopUp(_topup(uid), timeout=5)
                elif service == "auth":
                    auth_pb2_grpc.AuthStub(channel).SetRole(auth_pb2.SetRoleRequest(), timeout=5)
                else:
                    inference_pb2_grpc.InferenceStub(channel).ListChannels(inference_pb2.ListChannelsRequest(),
                                                                           timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (service, err.value)
    _unchanged(w, uid)


def test_a_client_whose_certificate_another_ca_signed_is_refused(world: World, tmp_path: Path) -> None:
    """A certificate that says `edge`, from a CA chatkore does not trust, opens nothing."""
    w = world
    uid = w.user(credits=5)["id"]
    rogue = GrpcTls.from_dir("edge", pki.ensure(tmp_path / "rogue", ("edge",)) / "edge")
    # It trusts chatkore's CA (so the server's certificate checks out): only its own is wrong.
    rogue = GrpcTls("edge", ca=(w.stack.tls_dir("edge") / "ca.crt").read_bytes(), cert=rogue.cert, key=rogue.key)
    with grpc.secure_channel(w.stack.target("billing"), rogue.channel_credentials(),
                             options=[("grpc.ssl_target_name_override", "billing")]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            billing_pb2_grpc.BillingStub(channel).TopUp(_topup(uid), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    _unchanged(w, uid)


def test_a_client_refuses_a_server_that_chatkore_ca_did_not_sign(world: World, tmp_path: Path) -> None:
    """The other way round: a caller with a good certificate does not talk to an impostor billing."""
    rogue = pki.ensure(tmp_path / "rogue", ("billing",)) / "billing"
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [((rogue / "tls.key").read_bytes(), (rogue / "tls.crt").read_bytes())]))
    server.start()
    try:
        tls = GrpcTls.from_dir("inference", world.stack.tls_dir("inference"))
        with grpc.secure_channel(f"127.0.0.1:{port}", tls.channel_credentials(),
                                 options=[("grpc.ssl_target_name_override", "billing")]) as channel:
            with pytest.raises(grpc.RpcError) as err:
                billing_pb2_grpc.BillingStub(channel).Settle(billing_pb2.SettleRequest(request_id="req_x"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_each_certificate_opens_only_its_own_methods(world: World) -> None:
    w = world
    uid = w.user(credits=5)["id"]
    # The edge may top up and read, but never hold or charge: that is inference's.
    edge = billing_pb2_grpc.BillingStub(w.stack.grpc_channel("billing", "edge"))
    with pytest.raises(grpc.RpcError) as err:
        edge.Reserve(_reserve(uid), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "edge may not call chatkore.v1.Billing/Reserve" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        edge.Settle(billing_pb2.SettleRequest(request_id="req_x", prompt_tokens=1, status="complete"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert edge.GetUser(billing_pb2.GetUserRequest(user_id=uid), timeout=5).id == uid
    # Inference may hold, but not top up, sign users up or change roles.
    inference = billing_pb2_grpc.BillingStub(w.stack.grpc_channel("billing", "inference"))
    signup = billing_pb2.CreateUserRequest(name="x", reference="x-" + secrets.token_hex(4))
    for call, request in ((inference.TopUp, _topup(uid)), (inference.CreateUser, signup),
                          (inference.VerifyLedger, billing_pb2.VerifyLedgerRequest())):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    auth_as_billing = auth_pb2_grpc.AuthStub(w.stack.grpc_channel("auth", "billing"))
    with pytest.raises(grpc.RpcError) as err:
        auth_as_billing.SetRole(auth_pb2.SetRoleRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    relay_as_auth = inference_pb2_grpc.InferenceStub(w.stack.grpc_channel("inference", "auth"))
    with pytest.raises(grpc.RpcError) as err:
        list(relay_as_auth.RelayStream(inference_pb2.RelayRequest(), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _unchanged(w, uid)


def test_the_plaintext_health_port_answers_health_and_nothing_else(world: World) -> None:
    w = world
    uid = w.user(credits=5)["id"]
    with grpc.insecure_channel(f"127.0.0.1:{w.stack.health_ports['billing']}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            billing_pb2_grpc.BillingStub(channel).TopUp(_topup(uid), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "without a certificate" in (err.value.details() or "")
    _unchanged(w, uid)


def test_every_method_of_every_service_has_its_callers_and_no_others() -> None:
    methods = {f"/{s.full_name}/{m.name}" for module in (auth_pb2, billing_pb2, inference_pb2, mux_pb2)
               for s in module.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert set(mtls.CALLERS) == methods
    assert all(callers and callers <= set(mtls.PROCESSES) for callers in mtls.CALLERS.values())
    assert mtls.CALLERS["/chatkore.v1.Billing/Reserve"] == {"inference"}
    assert mtls.CALLERS["/chatkore.v1.Billing/TopUp"] == {"edge"}
