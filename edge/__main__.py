"""`python -m edge`: run the HTTP edge."""
from aiohttp import web

from edge.app import make_app
from edge.config import EdgeConfig
from services.common import logs, telemetry

if __name__ == "__main__":
    cfg = EdgeConfig.from_env()
    logs.setup("edge", cfg.log_level)
    telemetry.start("edge", cfg.telemetry)
    # Streams in flight get `grace_s` to finish (and settle) after SIGTERM.
    web.run_app(make_app(cfg), host=cfg.host, port=cfg.port, shutdown_timeout=cfg.grace_s, access_log=None,
                handler_cancellation=True, print=None)
