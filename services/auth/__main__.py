"""`python -m services.auth`: run the auth service."""
import asyncio

from services.auth.config import AuthConfig
from services.auth.server import serve
from services.common import logs, loop, telemetry

if __name__ == "__main__":
    cfg = AuthConfig.from_env()
    logs.setup("auth", cfg.log_level)
    telemetry.start("auth", cfg.telemetry)
    loop.install()
    asyncio.run(serve(cfg))
