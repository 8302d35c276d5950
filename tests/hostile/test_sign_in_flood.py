"""A flood of sign-ins, many abandoned half-way, cannot push auth past its pod's memory limit:
argon2 holds 64 MiB per hash, and only CHATKORE_PASSWORD_HASHES_AT_ONCE hashes ever run."""
from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import grpc
import yaml

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from tests.hostile import grpcpeer
from tests.hostile.procwatch import Watch
from tests.world import World

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "auth.yaml"
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
SIGN_INS = 100


def pod_memory_limit() -> int:
    """The auth container's memory limit in the shipped manifests, in bytes."""
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment":
            limit = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            return int(limit[:-2]) * UNITS[limit[-2:]]
    raise AssertionError(f"no Deployment in {MANIFEST}")


async def _flood(world: World) -> list[str]:
    email, password = f"flood-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(12)
    channel = grpcpeer.channel(world, "auth")
    auth = auth_pb2_grpc.AuthStub(channel)

    async def sign_in(give_up_s: float) -> str:
        try:
            await auth.Login(auth_pb2.LoginRequest(email=email, password=password), timeout=give_up_s)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    try:
        await auth.Register(auth_pb2.RegisterRequest(email=email, password=password), timeout=60)
        # Every other caller gives up almost at once: its hash may have started, and runs on.
        outcomes = await asyncio.gather(*(sign_in(0.05 if i % 2 else 300) for i in range(SIGN_INS)))
        outcomes.append(await sign_in(60))  # and auth still signs people in afterwards
        return outcomes
    finally:
        await channel.close()


def test_a_hundred_sign_ins_at_once_stay_within_the_pod_limit(world: World) -> None:
    limit = pod_memory_limit()
    with Watch(world.stack.procs["auth"].pid) as auth:
        outcomes = asyncio.run(_flood(world))
    assert world.stack.procs["auth"].poll() is None, "auth died"
    assert set(outcomes[1:SIGN_INS:2]) <= {"DEADLINE_EXCEEDED", "OK", "CANCELLED"}, outcomes
    assert outcomes[0:SIGN_INS:2] == ["OK"] * (SIGN_INS // 2) and outcomes[-1] == "OK", outcomes
    assert auth.peak < limit, f"auth's RSS reached {auth.peak / 2**20:.0f} MiB; its pod's limit is {limit / 2**20:.0f}"
