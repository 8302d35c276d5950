"""`python -m edge`: run the HTTP edge."""
import asyncio

from edge.config import EdgeConfig
from edge.server import serve
from services.common import logs, loop, telemetry

if __name__ == "__main__":
    cfg = EdgeConfig.from_env()
    logs.setup("edge", cfg.log_level)
    telemetry.start("edge", cfg.telemetry)
    loop.install()
    asyncio.run(serve(cfg))
