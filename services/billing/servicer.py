"""Billing's gRPC face: protobuf in, a call on Books, protobuf out."""
from __future__ import annotations

import grpc

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.billing.books import Books
from services.billing.pricing import Price, Rates, Usage
from services.billing.store import AlertRow, OrderRow, RequestRow, UsageFilter, UserRow
from services.billing.till import Till, Verdict

MAX_AWAITED = 1024  # request ids one AwaitSettled may name


def _user(u: UserRow) -> billing_pb2.User:
    return billing_pb2.User(id=u.id, name=u.name, balance=u.balance, held=u.held, created=u.created,
                            disabled=u.disabled, owed=u.owed)


def _price(p: Price) -> billing_pb2.Price:
    return billing_pb2.Price(model=p.model, prompt=p.prompt, completion=p.completion, min_charge=p.min_charge,
                             context_window=p.context_window, max_output_tokens=p.max_output_tokens,
                             cached_prompt=p.cached_prompt_rate, cache_write=p.cache_write_rate,
                             tiers=billing_pb2.Multipliers(values=dict(p.tiers)),
                             features=billing_pb2.Multipliers(values=dict(p.features)),
                             units=billing_pb2.UnitPrices(values=dict(p.units)),
                             audio_prompt=p.audio_prompt, audio_completion=p.audio_completion)


def _usage(r: RequestRow) -> billing_pb2.UsageRow:
    return billing_pb2.UsageRow(
        request_id=r.request_id, user_id=r.user_id, key_id=r.key_id, model=r.model,
        prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, credits=r.credits,
        status=r.status, usage_source=r.usage_source, created=r.created, channel_id=r.channel_id,
        cached_prompt_tokens=r.cached_prompt_tokens, cache_write_tokens=r.cache_write_tokens,
        reasoning_tokens=r.reasoning_tokens, unpaid_credits=r.unpaid_credits, late=r.late,
    )


def _alert(a: AlertRow) -> billing_pb2.BalanceAlert:
    return billing_pb2.BalanceAlert(user_id=a.user_id, threshold=a.threshold, below=a.below, balance=a.owned,
                                    lang=a.lang)


def _order(o: OrderRow) -> billing_pb2.Order:
    return billing_pb2.Order(
        id=o.id, user_id=o.user_id, provider=o.provider, currency=o.currency, amount=o.amount, credits=o.credits,
        status=o.status, pay_url=o.pay_url, qr_code=o.qr_code, created=o.created, expires_at=o.expires_at,
        paid_at=o.paid_at, review=o.review, review_note=o.review_note, refunded=o.refunded, owed=o.owed,
    )


def _verdict(v: Verdict) -> billing_pb2.NotificationVerdict:
    return billing_pb2.NotificationVerdict(accepted=v.accepted, verdict=v.verdict, reason=v.reason,
                                           order_id=v.order_id)


def _settled_usage(request: billing_pb2.SettleRequest) -> Usage:
    if request.HasField("usage"):
        u = request.usage
        return Usage(u.prompt, u.completion, u.cached_prompt, u.cache_write, u.reasoning, u.audio_prompt,
                     u.audio_completion)
    return Usage(request.prompt_tokens, request.completion_tokens)


class BillingServicer(billing_pb2_grpc.BillingServicer):
    def __init__(self, books: Books, rates: Rates, till: Till) -> None:
        self.books = books
        self.rates = rates
        self.till = till

    async def CreateUser(self, request: billing_pb2.CreateUserRequest,
                         context: grpc.aio.ServicerContext) -> billing_pb2.User:
        credits = request.credits if request.HasField("credits") else None
        return _user(await self.books.create_user(request.name, credits, request.reference))

    async def AwaitSettled(self, request: billing_pb2.AwaitSettledRequest,
                           context: grpc.aio.ServicerContext) -> billing_pb2.AwaitSettledReply:
        still = await self.books.await_settled(list(request.request_ids[:MAX_AWAITED]),
                                               min(request.timeout_ms, 10_000) / 1000)
        return billing_pb2.AwaitSettledReply(open=len(still), still_held=still)

    async def GetUser(self, request: billing_pb2.GetUserRequest,
                      context: grpc.aio.ServicerContext) -> billing_pb2.User:
        return _user(await self.books.get_user(request.user_id))

    async def TopUp(self, request: billing_pb2.TopUpRequest, context: grpc.aio.ServicerContext) -> billing_pb2.User:
        return _user(await self.books.top_up(request.user_id, request.credits, request.reference))

    async def Reserve(self, request: billing_pb2.ReserveRequest,
                      context: grpc.aio.ServicerContext) -> billing_pb2.Hold:
        hold = await self.books.reserve(
            request_id=request.request_id, user_id=request.user_id, key_id=request.key_id,
            credit_limit=request.credit_limit, model=request.model, prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_completion_tokens, choices=request.choices or 1, channel_id=request.channel_id,
            try_number=request.try_number, service_tier=request.service_tier, features=tuple(request.features),
            unit=request.unit, units=request.units, unit_required=request.unit_required,
            unit_param=request.unit_param, input_only=request.input_only,
        )
        return billing_pb2.Hold(request_id=hold.request_id, amount=hold.amount,
                                completion_budget=hold.completion_budget, budget_capped=hold.budget_capped,
                                completion_limit=hold.completion_limit, ttl_s=hold.ttl_s, unit=hold.unit)

    async def Settle(self, request: billing_pb2.SettleRequest,
                     context: grpc.aio.ServicerContext) -> billing_pb2.Settlement:
        s = await self.books.settle(
            request_id=request.request_id, usage=_settled_usage(request), status=request.status,
            usage_source=request.usage_source, channel_id=request.channel_id, try_number=request.try_number,
            unbilled=request.unbilled_tokens,
        )
        return billing_pb2.Settlement(request_id=s.request_id, charged=s.charged, released=s.released, state=s.state,
                                      unpaid=s.unpaid)

    async def KeepAlive(self, request: billing_pb2.KeepAliveRequest,
                        context: grpc.aio.ServicerContext) -> billing_pb2.KeepAliveReply:
        return billing_pb2.KeepAliveReply(alive=await self.books.keep_alive(request.request_id, request.try_number))

    async def SetPrice(self, request: billing_pb2.SetPriceRequest,
                       context: grpc.aio.ServicerContext) -> billing_pb2.Price:
        def given(name: str) -> int | None:
            return getattr(request, name) if request.HasField(name) else None

        return _price(await self.books.set_price(
            request.model, request.prompt, request.completion, given("min_charge"),
            cached_prompt=given("cached_prompt"), cache_write=given("cache_write"),
            context=given("context_window"), max_output=given("max_output_tokens"),
            tiers=dict(request.tiers.values) if request.HasField("tiers") else None,
            features=dict(request.features.values) if request.HasField("features") else None,
            units=dict(request.units.values) if request.HasField("units") else None,
            audio_prompt=given("audio_prompt"), audio_completion=given("audio_completion"),
        ))

    async def ListPrices(self, request: billing_pb2.ListPricesRequest,
                         context: grpc.aio.ServicerContext) -> billing_pb2.PriceList:
        return billing_pb2.PriceList(prices=[_price(p) for p in await self.books.list_prices()],
                                     credits_per_cny=self.rates.cny, credits_per_usd=self.rates.usd,
                                     payment_providers=self.till.providers())

    async def ListUsage(self, request: billing_pb2.ListUsageRequest,
                        context: grpc.aio.ServicerContext) -> billing_pb2.UsageList:
        where = UsageFilter(user_id=request.user_id, request_id=request.request_id[:200], model=request.model[:200],
                            key_id=request.key_id, since=request.since, until=request.until,
                            status=request.status[:40])
        rows, cursor = await self.books.usage(where, request.limit, request.cursor)
        return billing_pb2.UsageList(rows=[_usage(r) for r in rows], next_cursor=cursor)

    async def GrantSignupBonus(self, request: billing_pb2.GrantSignupBonusRequest,
                               context: grpc.aio.ServicerContext) -> billing_pb2.SignupBonus:
        granted, credits, user = await self.books.grant_signup_bonus(request.user_id, request.reference)
        return billing_pb2.SignupBonus(granted=granted, credits=credits, user=_user(user))

    async def SetBalanceAlert(self, request: billing_pb2.SetBalanceAlertRequest,
                              context: grpc.aio.ServicerContext) -> billing_pb2.BalanceAlert:
        return _alert(await self.books.set_alert(request.user_id, request.threshold, request.lang))

    async def GetBalanceAlert(self, request: billing_pb2.GetUserRequest,
                              context: grpc.aio.ServicerContext) -> billing_pb2.BalanceAlert:
        return _alert(await self.books.get_alert(request.user_id))

    async def TakeBalanceAlerts(self, request: billing_pb2.TakeBalanceAlertsRequest,
                                context: grpc.aio.ServicerContext) -> billing_pb2.BalanceAlertList:
        return billing_pb2.BalanceAlertList(alerts=[_alert(a) for a in await self.books.take_alerts()])

    async def GetSpend(self, request: billing_pb2.GetSpendRequest,
                       context: grpc.aio.ServicerContext) -> billing_pb2.Spend:
        user, spent, granted = await self.books.spend(request.user_id, request.since, request.until)
        return billing_pb2.Spend(user_id=user.id, spent=spent, balance=user.balance, held=user.held,
                                 total_granted=granted)

    async def VerifyLedger(self, request: billing_pb2.VerifyLedgerRequest,
                           context: grpc.aio.ServicerContext) -> billing_pb2.LedgerReport:
        report = await self.books.verify()
        problems = list(report["problems"])  # type: ignore[call-overload]
        return billing_pb2.LedgerReport(
            ok=not problems, entries=report["entries"], ledger_sum=report["ledger_sum"],  # type: ignore[arg-type]
            problems=problems, open_holds=report["open_holds"], users=report["users"],  # type: ignore[arg-type]
        )

    async def CreateRedeemCodes(self, request: billing_pb2.CreateRedeemCodesRequest,
                                context: grpc.aio.ServicerContext) -> billing_pb2.RedeemCodes:
        return billing_pb2.RedeemCodes(codes=await self.books.create_codes(request.credits, request.count))

    async def Redeem(self, request: billing_pb2.RedeemRequest, context: grpc.aio.ServicerContext) -> billing_pb2.User:
        return _user(await self.books.redeem(request.user_id, request.code))

    async def SearchUsers(self, request: billing_pb2.SearchUsersRequest,
                          context: grpc.aio.ServicerContext) -> billing_pb2.UserList:
        return billing_pb2.UserList(users=[_user(u) for u in await self.books.search_users(request.query,
                                                                                           request.limit)])

    async def SetUserDisabled(self, request: billing_pb2.SetUserDisabledRequest,
                              context: grpc.aio.ServicerContext) -> billing_pb2.User:
        return _user(await self.books.set_disabled(request.user_id, request.disabled))

    async def DailySpend(self, request: billing_pb2.DailySpendRequest,
                         context: grpc.aio.ServicerContext) -> billing_pb2.DailySpendList:
        days = await self.books.daily_spend(request.user_id, request.days)
        return billing_pb2.DailySpendList(days=[
            billing_pb2.DaySpend(day=day, credits=credits, requests=requests, tokens=tokens)
            for day, credits, requests, tokens in days
        ])

    async def ModelStats(self, request: billing_pb2.ModelStatsRequest,
                         context: grpc.aio.ServicerContext) -> billing_pb2.ModelStatsList:
        rows = await self.books.model_stats(request.since, request.bucket_s)
        return billing_pb2.ModelStatsList(stats=[
            billing_pb2.ModelStat(bucket=b, model=m, requests=n, prompt_tokens=pt, completion_tokens=ct,
                                  credits=c, errors=e, unbilled_tokens=ub, unpaid_credits=up)
            for b, m, n, pt, ct, c, e, ub, up in rows
        ])

    # --- money in ---------------------------------------------------------------------

    async def CreateOrder(self, request: billing_pb2.CreateOrderRequest,
                          context: grpc.aio.ServicerContext) -> billing_pb2.Order:
        return _order(await self.till.create_order(request.user_id, request.provider, request.amount))

    async def GetOrder(self, request: billing_pb2.GetOrderRequest,
                       context: grpc.aio.ServicerContext) -> billing_pb2.Order:
        return _order(await self.till.get_order(request.order_id, request.user_id))

    async def ListOrders(self, request: billing_pb2.ListOrdersRequest,
                         context: grpc.aio.ServicerContext) -> billing_pb2.OrderList:
        review = request.review if request.HasField("review") else None
        orders = await self.till.list_orders(request.user_id, request.status, request.provider, review, request.limit)
        return billing_pb2.OrderList(orders=[_order(o) for o in orders])

    async def PayDemoOrder(self, request: billing_pb2.GetOrderRequest,
                           context: grpc.aio.ServicerContext) -> billing_pb2.Order:
        return _order(await self.till.pay_demo(request.user_id, request.order_id))

    async def AlipayNotify(self, request: billing_pb2.AlipayNotification,
                           context: grpc.aio.ServicerContext) -> billing_pb2.NotificationVerdict:
        return _verdict(await self.till.alipay_notify(dict(request.params), request.source))

    async def StripeWebhook(self, request: billing_pb2.StripeEvent,
                            context: grpc.aio.ServicerContext) -> billing_pb2.NotificationVerdict:
        return _verdict(await self.till.stripe_webhook(request.payload, request.signature, request.source))

    async def SetOrderReview(self, request: billing_pb2.SetOrderReviewRequest,
                             context: grpc.aio.ServicerContext) -> billing_pb2.Order:
        return _order(await self.till.set_review(request.order_id, request.review, request.note))

    async def ListNotifications(self, request: billing_pb2.ListNotificationsRequest,
                                context: grpc.aio.ServicerContext) -> billing_pb2.NotificationList:
        rows = await self.till.notifications(request.order_id, request.limit)
        return billing_pb2.NotificationList(notifications=[
            billing_pb2.Notification(id=n.id, provider=n.provider, order_id=n.order_id, event=n.event,
                                     verdict=n.verdict, reason=n.reason, received=n.received)
            for n in rows
        ])

    async def GetInvite(self, request: billing_pb2.GetUserRequest,
                        context: grpc.aio.ServicerContext) -> billing_pb2.Invite:
        info = await self.till.invite(request.user_id)
        return billing_pb2.Invite(code=info.code, invited=info.invited, earned=info.earned,
                                  reward_pct=info.reward_pct)

    async def AcceptInvite(self, request: billing_pb2.AcceptInviteRequest,
                           context: grpc.aio.ServicerContext) -> billing_pb2.AcceptInviteReply:
        return billing_pb2.AcceptInviteReply(accepted=await self.till.accept_invite(request.user_id, request.code))
