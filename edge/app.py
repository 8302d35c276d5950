"""The edge application factory."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from chatkore.v1 import auth_pb2_grpc, billing_pb2_grpc, inference_pb2_grpc
from edge import cors, routes
from edge.authn import TRUSTED_PROXIES, KeyCache
from edge.captcha import CAPTCHA, Captcha
from edge.config import EdgeConfig
from edge.guard import AuthGuard, LimiterCounter, SignupLimit
from edge.inputs import declared_size
from edge.keylimits import KeyLimits
from edge.middleware import Router, add_request_id, errors
from edge.ratelimit import make_limiter
from edge.retry import RetryInterceptor
from edge.settled import ANSWERED, AnsweredCalls, read_after_write
from edge.state import CONFIG, COUNTERS, GUARD, KEYS, LIMITS, PEERS, SIGNUPS, Counters, Peers
from services.common import metrics_http, peers, telemetry


async def _peers(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    channels = {name: peers.channel(addr, name, cfg.tls, outer=[RetryInterceptor()]) for name, addr in
                (("auth", cfg.auth_addr), ("billing", cfg.billing_addr), ("inference", cfg.inference_addr))}
    app[PEERS] = Peers(
        auth=auth_pb2_grpc.AuthStub(channels["auth"]),
        billing=billing_pb2_grpc.BillingStub(channels["billing"]),
        inference=inference_pb2_grpc.InferenceStub(channels["inference"]),
        health={name: health_pb2_grpc.HealthStub(ch) for name, ch in channels.items()},
    )
    app[KEYS] = KeyCache(app[PEERS].auth, cfg.key_cache_s)
    feed = asyncio.create_task(app[KEYS].follow_changes())
    yield
    feed.cancel()
    for channel in channels.values():
        await channel.close()


async def _limits(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    limiter = make_limiter(cfg.redis_url)
    app[LIMITS] = KeyLimits(limiter)
    app[GUARD] = AuthGuard(LimiterCounter(limiter, cfg.auth_failures_per_min), cfg.auth_failures_per_min)
    app[SIGNUPS] = SignupLimit(limiter, cfg.signups_per_hour)
    yield
    await app[LIMITS].close()


async def _captcha(app: web.Application) -> AsyncIterator[None]:
    """The sign-up captcha's verifier, when one is configured (edge/captcha.py)."""
    cfg = app[CONFIG].captcha
    if cfg is None:
        yield
        return
    checker = Captcha(cfg)
    await checker.open()
    app[CAPTCHA] = checker
    yield
    await checker.close()


async def _metrics_server(app: web.Application) -> AsyncIterator[None]:
    """/metrics on its own port when one is set, so a public Ingress never shows it."""
    cfg = app[CONFIG].telemetry
    runner = await metrics_http.serve(cfg.metrics_host, cfg.metrics_port) if cfg.metrics_port else None
    yield
    if runner is not None:
        await runner.cleanup()


def make_app(cfg: EdgeConfig) -> web.Application:
    traced = telemetry.http_server_middleware()  # None unless an OTLP endpoint is configured
    middlewares = [errors, cors.preflight, declared_size, read_after_write]
    app = web.Application(router=Router(), middlewares=middlewares if traced is None else [traced, *middlewares],
                          client_max_size=cfg.max_body_bytes)
    app[CONFIG] = cfg
    app[TRUSTED_PROXIES] = cfg.trusted_proxies
    app[COUNTERS] = Counters()
    app[ANSWERED] = AnsweredCalls()
    app.cleanup_ctx.append(_peers)
    app.cleanup_ctx.append(_limits)
    app.cleanup_ctx.append(_captcha)
    app.cleanup_ctx.append(_metrics_server)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(cors.add_headers)
    routes.setup(app)
    return app
