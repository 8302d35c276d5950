"""`python -m services.demo [--port N]`: run the demo upstream."""
import argparse

from aiohttp import web

from services.common import logs
from services.demo.server import make_app

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    logs.setup("demo-upstream", "WARNING")
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)
