"""Mutual TLS between chatkore's processes, and who may call which gRPC method.

The one place where gRPC credentials are made: every server (grpcserver.serve) and every
channel to a peer (peers.channel) get theirs from here. One CA signs a certificate per process;
its common name (`auth`, `billing`, `inference`, `edge`) is the caller's identity, and CALLERS
says which identities each method serves. A method missing from CALLERS serves no one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from services.common.config import ConfigError, Secret, data_dir, env_optional

log = logging.getLogger(__name__)

PROCESSES = ("auth", "billing", "inference", "edge")
INSECURE_VAR = "CHATKORE_GRPC_INSECURE"
DIR_VAR = "CHATKORE_GRPC_TLS_DIR"

_EDGE = frozenset({"edge"})
# Method → the processes whose certificate may call it. The README lists the same table.
CALLERS: dict[str, frozenset[str]] = {
    **{f"/chatkore.v1.Auth/{m}": _EDGE for m in (
        "Authenticate", "AuthorizeAdmin", "CreateKey", "ListKeys", "RevokeKey", "KeyChanges", "Register",
        "Login", "ResolveSession", "Logout", "WebKey", "SetRole", "ListAccounts", "RecordAudit", "ListAudit",
        "RequestPasswordReset", "ResetPassword", "ChangePassword", "VerifyEmail", "SendVerification",
        "GetNotice", "SetNotice")},
    **{f"/chatkore.v1.Billing/{m}": _EDGE for m in (
        "GetUser", "TopUp", "SetPrice", "ListPrices", "ListUsage", "GetSpend", "VerifyLedger",
        "CreateRedeemCodes", "Redeem", "SearchUsers", "SetUserDisabled", "DailySpend", "ModelStats",
        # Payments: orders, the providers' notifications (they reach the edge over HTTP), invites.
        "CreateOrder", "GetOrder", "ListOrders", "PayDemoOrder", "SetOrderReview", "AlipayNotify",
        "StripeWebhook", "ListNotifications", "GetInvite", "AcceptInvite",
        # Low-balance alerts: the threshold is set from the console.
        "SetBalanceAlert", "GetBalanceAlert",
        # Reads after the replies the edge gave: their settlements land first.
        "AwaitSettled")},
    # Console sign-up (auth) makes the billing user behind a new account; the admin API (edge) too.
    "/chatkore.v1.Billing/CreateUser": frozenset({"edge", "auth"}),
    # A verified address brings the sign-up bonus; auth mails the low-balance alerts it takes.
    "/chatkore.v1.Billing/GrantSignupBonus": frozenset({"auth"}),
    "/chatkore.v1.Billing/TakeBalanceAlerts": frozenset({"auth"}),
    # Holds and charges are placed only by the service that relays the call upstream.
    "/chatkore.v1.Billing/Reserve": frozenset({"inference"}),
    "/chatkore.v1.Billing/Settle": frozenset({"inference"}),
    "/chatkore.v1.Billing/KeepAlive": frozenset({"inference"}),
    **{f"/chatkore.v1.Inference/{m}": _EDGE for m in (
        "Relay", "RelayStream", "ListModels", "CreateChannel", "ListChannels", "UpdateChannel",
        "DeleteChannel", "TestChannel", "GetStats", "GetResponse", "DeleteResponse", "ListInputItems",
        "CancelResponse",
        "CountTokens", "SetAlias", "ListAliases", "DeleteAlias")},
    # The multiplexed stream (services/common/mux.py) of every process that calls a peer: each
    # call on it is checked against its own row above.
    "/chatkore.v1.Mux/Open": frozenset({"edge", "auth", "inference"}),
}
# Health answers anyone, over TLS or (CHATKORE_HEALTH_LISTEN) plaintext: the kubelet's gRPC
# probe cannot present a certificate. It tells nothing but SERVING or not.
OPEN_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class GrpcTls:
    """One process's certificate, key and CA, read once at start-up; or insecure, loudly."""

    process: str
    ca: bytes = b""
    cert: bytes = b""
    key: Secret | None = None
    insecure: bool = False

    @classmethod
    def from_env(cls, process: str) -> GrpcTls:
        flag = env_optional(INSECURE_VAR)
        if flag not in (None, "0", "1"):
            raise ConfigError(f"{INSECURE_VAR} must be 1 or unset, got {flag!r}")
        if flag == "1":
            log.warning("%s=1: gRPC between chatkore's services is PLAINTEXT and UNAUTHENTICATED; any process"
                        " that reaches a port can top up, relay or read as anyone. For local debugging only.",
                        INSECURE_VAR)
            return cls(process, insecure=True)
        return cls.from_dir(process, Path(env_optional(DIR_VAR) or data_dir() / "pki" / process))

    @classmethod
    def from_dir(cls, process: str, directory: Path) -> GrpcTls:
        """`ca.crt`, `tls.crt`, `tls.key` (a cert-manager Secret's layout) for `process`."""
        files = {}
        for name in ("ca.crt", "tls.crt", "tls.key"):
            try:
                files[name] = (directory / name).read_bytes()
            except OSError:
                raise ConfigError(f"{DIR_VAR}: cannot read {directory / name} (`make run` creates a local CA and"
                                  f" certificates; {INSECURE_VAR}=1 turns TLS off for local debugging only)") from None
        try:
            cert = x509.load_pem_x509_certificate(files["tls.crt"])
        except ValueError:
            raise ConfigError(f"{DIR_VAR}: {directory / 'tls.crt'} is not a PEM certificate") from None
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [process]:
            raise ConfigError(f"{DIR_VAR}: {directory / 'tls.crt'} is issued to {names}, not to {process!r}")
        return cls(process, ca=files["ca.crt"], cert=files["tls.crt"], key=Secret(files["tls.key"].decode()))

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.key is not None
        return grpc.ssl_server_credentials([(self.key.reveal().encode(), self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.key is not None
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key.reveal().encode(),
                                            certificate_chain=self.cert)


def secure_channel(tls: GrpcTls, target: str, peer: str, options: list[tuple[str, object]],
                   interceptors: list[object]) -> grpc.aio.Channel:
    """A channel to `peer` (whose certificate must name it), presenting this process's certificate.

    The handshake happens once per connection: channels live as long as their process.
    """
    if tls.insecure:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    # Peers are dialled by address or by a DNS name that lists every replica; what is checked
    # is the service's name in its certificate, the same whichever replica answers.
    return grpc.aio.secure_channel(target, tls.channel_credentials(),
                                   options=[*options, ("grpc.ssl_target_name_override", peer)],
                                   interceptors=interceptors)


def caller_of(context: grpc.aio.ServicerContext) -> str | None:
    """The process a call comes from, by the common name of its verified certificate; None without one."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def allowed(method: str, caller: str | None) -> bool:
    return caller is not None and caller in CALLERS.get(method, ())
