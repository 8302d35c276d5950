"""`python -m services.inference`: run the inference service."""
import asyncio

from services.common import logs, loop, telemetry
from services.inference.config import InferenceConfig
from services.inference.server import serve

if __name__ == "__main__":
    cfg = InferenceConfig.from_env()
    logs.setup("inference", cfg.log_level)
    telemetry.start("inference", cfg.telemetry)
    loop.install()
    asyncio.run(serve(cfg))
