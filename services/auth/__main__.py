"""`python -m services.auth`: run the auth service."""
import asyncio

from services.auth.config import AuthConfig
from services.auth.server import serve
from services.common import logs

if __name__ == "__main__":
    cfg = AuthConfig.from_env()
    logs.setup("auth", cfg.log_level)
    asyncio.run(serve(cfg))
