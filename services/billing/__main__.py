"""`python -m services.billing`: run the billing service."""
import asyncio

from services.billing.config import BillingConfig
from services.billing.server import serve
from services.common import logs, loop, telemetry

if __name__ == "__main__":
    cfg = BillingConfig.from_env()
    logs.setup("billing", cfg.log_level)
    telemetry.start("billing", cfg.telemetry)
    loop.install()
    asyncio.run(serve(cfg))
