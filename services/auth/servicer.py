"""Auth's gRPC face: protobuf in, a call on Keys or Accounts, protobuf out."""
from __future__ import annotations

import json

import grpc

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from services.auth.accounts import Accounts, Session
from services.auth.audit import AuditLog
from services.auth.keys import Keys, KeySpec
from services.auth.notice import Notices
from services.auth.recovery import Recovery
from services.auth.store import AccountRow, AuditRow, KeyRow
from services.auth.verification import Verification


def _info(k: KeyRow) -> auth_pb2.KeyInfo:
    return auth_pb2.KeyInfo(
        key_id=k.id, user_id=k.user_id, name=k.name, models=k.models, credit_limit=k.credit_limit,
        expires_at=k.expires_at, rpm=k.rpm, tpm=k.tpm, ips=k.ips, created=k.created, revoked=k.revoked,
        hint=k.hint, web=k.web,
    )


def _account(a: AccountRow) -> auth_pb2.Account:
    return auth_pb2.Account(user_id=a.user_id or 0, email=a.email, role=a.role, created=a.created,
                            email_verified=a.email_verified, verification_pending=a.verification_pending)


def _session(s: Session) -> auth_pb2.Session:
    return auth_pb2.Session(token=s.token, csrf_token=s.csrf_token, account=_account(s.account),
                            expires_at=s.expires_at)


def _audit(a: AuditRow) -> auth_pb2.AuditEntry:
    return auth_pb2.AuditEntry(id=a.id, at=a.at, actor=a.actor, action=a.action, target=a.target, status=a.status,
                               address=a.address, details_json=json.dumps(a.details, separators=(",", ":")))


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, keys: Keys, accounts: Accounts, audit: AuditLog, recovery: Recovery,
                 verification: Verification, notices: Notices) -> None:
        self.keys = keys
        self.accounts = accounts
        self.recovery = recovery
        self.audit = audit
        self.verification = verification
        self.notices = notices

    async def RecordAudit(self, request: auth_pb2.AuditEntry,
                          context: grpc.aio.ServicerContext) -> auth_pb2.AuditEntry:
        return _audit(await self.audit.record(actor=request.actor, action=request.action, target=request.target,
                                              status=request.status, address=request.address,
                                              details_json=request.details_json))

    async def ListAudit(self, request: auth_pb2.ListAuditRequest,
                        context: grpc.aio.ServicerContext) -> auth_pb2.AuditList:
        return auth_pb2.AuditList(entries=[_audit(a) for a in await self.audit.list(request.limit, request.before_id)])

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

    async def KeyChanges(self, request: auth_pb2.KeyChangesRequest,
                         context: grpc.aio.ServicerContext) -> auth_pb2.KeyChangesReply:
        latest, changes, reset = await self.keys.changes(request.after)
        return auth_pb2.KeyChangesReply(
            latest=latest, reset=reset,
            changes=[auth_pb2.KeyChange(id=i, key_id=k, user_id=u) for i, k, u in changes])

    async def RevokeKey(self, request: auth_pb2.RevokeKeyRequest,
                        context: grpc.aio.ServicerContext) -> auth_pb2.RevokeKeyReply:
        await self.keys.revoke(request.key_id, request.user_id)
        return auth_pb2.RevokeKeyReply()

    async def Register(self, request: auth_pb2.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> auth_pb2.Account:
        account = await self.accounts.register(request.email, request.password,
                                               bonus_on_verify=self.verification.required)
        if account.verification_pending:
            await self.verification.send_link(account, request.lang)
        return _account(account)

    async def VerifyEmail(self, request: auth_pb2.VerifyEmailRequest,
                          context: grpc.aio.ServicerContext) -> auth_pb2.VerifyEmailReply:
        account, bonus = await self.verification.verify(request.token)
        return auth_pb2.VerifyEmailReply(account=_account(account), bonus=bonus)

    async def SendVerification(self, request: auth_pb2.SendVerificationRequest,
                               context: grpc.aio.ServicerContext) -> auth_pb2.SendVerificationReply:
        await self.verification.resend(request.user_id, request.lang)
        return auth_pb2.SendVerificationReply()

    async def GetNotice(self, request: auth_pb2.GetNoticeRequest,
                        context: grpc.aio.ServicerContext) -> auth_pb2.Notice:
        text, contact, at, by = await self.notices.get()
        return auth_pb2.Notice(announcement=text, contact=contact, updated_at=at, updated_by=by)

    async def SetNotice(self, request: auth_pb2.Notice, context: grpc.aio.ServicerContext) -> auth_pb2.Notice:
        text, contact, at, by = await self.notices.set(request.announcement, request.contact, request.updated_by)
        return auth_pb2.Notice(announcement=text, contact=contact, updated_at=at, updated_by=by)

    async def Login(self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        return _session(await self.accounts.login(request.email, request.password, request.client_ip))

    async def ResolveSession(self, request: auth_pb2.ResolveSessionRequest,
                             context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        return _session(await self.accounts.resolve(request.token))

    async def Logout(self, request: auth_pb2.LogoutRequest,
                     context: grpc.aio.ServicerContext) -> auth_pb2.LogoutReply:
        await self.accounts.logout(request.token)
        return auth_pb2.LogoutReply()

    async def RequestPasswordReset(self, request: auth_pb2.PasswordResetRequest,
                                   context: grpc.aio.ServicerContext) -> auth_pb2.PasswordReply:
        await self.recovery.request_reset(request.email, request.lang)
        return auth_pb2.PasswordReply()

    async def ResetPassword(self, request: auth_pb2.ResetPasswordRequest,
                            context: grpc.aio.ServicerContext) -> auth_pb2.PasswordReply:
        await self.recovery.reset(request.token, request.password)
        return auth_pb2.PasswordReply()

    async def ChangePassword(self, request: auth_pb2.ChangePasswordRequest,
                             context: grpc.aio.ServicerContext) -> auth_pb2.PasswordReply:
        await self.recovery.change(request.session_token, request.current, request.new_password)
        return auth_pb2.PasswordReply()

    async def WebKey(self, request: auth_pb2.WebKeyRequest, context: grpc.aio.ServicerContext) -> auth_pb2.KeyInfo:
        return _info(await self.keys.web_key(request.user_id))

    async def SetRole(self, request: auth_pb2.SetRoleRequest,
                      context: grpc.aio.ServicerContext) -> auth_pb2.Account:
        return _account(await self.accounts.set_role(request.user_id, request.role))

    async def ListAccounts(self, request: auth_pb2.ListAccountsRequest,
                           context: grpc.aio.ServicerContext) -> auth_pb2.AccountList:
        rows = await self.accounts.of_users(list(request.user_ids))
        return auth_pb2.AccountList(accounts=[_account(a) for a in rows])
