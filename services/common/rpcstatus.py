"""How a served call ends, the same whether it came alone (grpcserver) or on a stream (muxserver):
its status from whatever it raised, and its metrics and log line."""
from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import psycopg
import psycopg_pool

from services.common import metrics
from services.common.errors import DETAILS_KEY, InvalidRequest, ServiceError, Unavailable

log = logging.getLogger(__name__)


def failure_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """The status (code, details, trailing metadata) a failed call ends with; never a traceback."""
    if isinstance(exc, ServiceError):
        status = exc.to_status()
        return status.code, status.details, tuple(status.trailing_metadata)
    if isinstance(exc, grpc.aio.AioRpcError):
        # A peer's failure passes through with its detail intact.
        trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if k == DETAILS_KEY)
        return exc.code(), exc.details() or "", trailing
    if isinstance(exc, psycopg.DataError):
        # The database refused a value the caller sent (a NUL character, a number out of
        # range): the caller's fault, whichever field it was.
        log.warning("database refused a value: %s", type(exc).__name__)
        return failure_status(InvalidRequest("A value in the request cannot be stored (a NUL character, or a number"
                                              " out of range)."))
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        log.warning("database unavailable: %s", exc)
        return failure_status(Unavailable("The service is temporarily unavailable; try again shortly."))
    log.error("unhandled error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error", ()


def finished(method: str, code: grpc.StatusCode, started: float) -> None:
    """The metrics of a served call, and its log line (with the request id): DEBUG when it
    succeeded — the edge's access line is the one line per request an operator follows it by
    (issue 16: no per-call INFO line inside the services) — INFO when it failed."""
    elapsed = time.perf_counter() - started
    metrics.RPCS.labels(method, code.name).inc()
    metrics.RPC_LATENCY.labels(method).observe(elapsed)
    level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "%s %s", method, code.name, extra={"ms": round(elapsed * 1000, 2)})
