"""Auth's gRPC face: protobuf in, a call on Keys, protobuf out."""
from __future__ import annotations

import grpc

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import Keys, KeySpec
from services.auth.store import KeyRow


def _info(k: KeyRow) -> auth_pb2.KeyInfo:
    return auth_pb2.KeyInfo(
        key_id=k.id, user_id=k.user_id, name=k.name, models=k.models, credit_limit=k.credit_limit,
        expires_at=k.expires_at, rpm=k.rpm, tpm=k.tpm, ips=k.ips, created=k.created, revoked=k.revoked,
        hint=k.hint,
    )


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest,
                           context: grpc.aio.ServicerContext) -> auth_pb2.KeyInfo:
        return _info(await self.keys.authenticate(request.api_key, request.client_ip))

    async def AuthorizeAdmin(self, request: auth_pb2.AuthorizeAdminRequest,
                             context: grpc.aio.ServicerContext) -> auth_pb2.AuthorizeAdminReply:
        self.keys.authorize_admin(request.bearer)
        return auth_pb2.AuthorizeAdminReply()

    async def CreateKey(self, request: auth_pb2.CreateKeyRequest,
                        context: grpc.aio.ServicerContext) -> auth_pb2.CreatedKey:
        spec = KeySpec(
            user_id=request.user_id, name=request.name, models=list(request.models),
            credit_limit=request.credit_limit, expires_at=request.expires_at, rpm=request.rpm, tpm=request.tpm,
            ips=list(request.ips),
        )
        row, key = await self.keys.create(spec)
        return auth_pb2.CreatedKey(info=_info(row), key=key)

    async def ListKeys(self, request: auth_pb2.ListKeysRequest,
                       context: grpc.aio.ServicerContext) -> auth_pb2.KeyList:
        return auth_pb2.KeyList(keys=[_info(k) for k in await self.keys.list(request.user_id)])

    async def RevokeKey(self, request: auth_pb2.RevokeKeyRequest,
                        context: grpc.aio.ServicerContext) -> auth_pb2.RevokeKeyReply:
        await self.keys.revoke(request.key_id)
        return auth_pb2.RevokeKeyReply()
