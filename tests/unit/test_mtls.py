"""Reading a process's gRPC certificate: the right one or a clear stop, and the insecure switch only loudly."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.common.mtls import GrpcTls
from services.inference.destinations import DestinationPolicy
from tools import pki


def test_each_process_reads_its_own_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = pki.ensure(tmp_path)
    monkeypatch.delenv("CHATKORE_GRPC_INSECURE", raising=False)
    monkeypatch.setenv("CHATKORE_GRPC_TLS_DIR", str(root / "billing"))
    tls = GrpcTls.from_env("billing")
    assert not tls.insecure and b"BEGIN CERTIFICATE" in tls.cert and "Secret('****')" in repr(tls)
    with pytest.raises(ConfigError, match="issued to \\['billing'\\], not to 'edge'"):
        GrpcTls.from_env("edge")  # another process's certificate is not this one's identity
    monkeypatch.setenv("CHATKORE_GRPC_TLS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="CHATKORE_GRPC_TLS_DIR: cannot read .*CHATKORE_GRPC_INSECURE=1"):
        GrpcTls.from_env("auth")
    # A second run keeps the CA and certificates it made.
    assert (root / "edge" / "tls.crt").read_bytes() == (pki.ensure(tmp_path) / "edge" / "tls.crt").read_bytes()
    for key in (root / "ca" / "ca.key", root / "auth" / "tls.key"):
        assert key.stat().st_mode & 0o077 == 0  # private keys readable by their owner only


def test_insecure_is_explicit_and_loud(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CHATKORE_GRPC_TLS_DIR", "/nowhere")
    monkeypatch.setenv("CHATKORE_GRPC_INSECURE", "yes")
    with pytest.raises(ConfigError, match="CHATKORE_GRPC_INSECURE must be 1 or unset"):
        GrpcTls.from_env("auth")
    monkeypatch.setenv("CHATKORE_GRPC_INSECURE", "1")
    with caplog.at_level(logging.WARNING):
        assert GrpcTls.from_env("auth").insecure
    assert "PLAINTEXT and UNAUTHENTICATED" in caplog.text and "local debugging only" in caplog.text


@pytest.mark.parametrize(("address", "port", "allowed"), [
    ("8.8.8.8", 443, True), ("2001:4860:4860::8888", 443, True),
    ("169.254.169.254", 80, False), ("::ffff:169.254.169.254", 80, False), ("fd00:ec2::254", 80, False),
    ("100.100.100.200", 80, False), ("0.0.0.0", 80, False), ("fe80::1%eth0", 80, False),
    ("127.0.0.1", 8090, True), ("127.0.0.1", 8091, False), ("10.1.2.3", 443, True), ("10.1.2.3", 80, True),
    ("192.168.1.1", 80, False), ("::1", 11434, True), ("::1", 80, False), ("100.64.0.1", 80, False),
])
def test_the_destination_policy(address: str, port: int, allowed: bool) -> None:
    policy = DestinationPolicy.parse("127.0.0.1:8090, 10.0.0.0/8 [::1]:11434, 169.254.0.0/16")  # the last: no effect
    assert (policy.refusal(address, port) is None) == allowed


@pytest.mark.parametrize("spec", ["10.0.0.0/33", "localhost", "127.0.0.1:0", "127.0.0.1:http", "[::1]x"])
def test_a_bad_allow_list_stops_the_process_naming_it(spec: str) -> None:
    with pytest.raises(ConfigError, match="CHATKORE_UPSTREAM_ALLOW"):
        DestinationPolicy.parse(spec)
