# syntax=docker/dockerfile:1
# One image build, one target per process:
#   docker build --target edge -t chatkore-edge .        (auth, billing, inference, edge, migrate)
# Every target runs as an unprivileged user on a read-only root filesystem: nothing is written
# at run time (bytecode is compiled here; tiktoken's rank files are read from the bpe-openai wheel).

# The browser libraries the edge's pages load (edge/pages.py), from the lock file; nothing is built.
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY edge/web/package.json edge/web/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile -r requirements.txt
COPY protos/ protos/
# The stubs are generated here from protos/, as `make protos` does; they are never committed.
RUN mkdir gen \
    && /opt/venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
       --pyi_out=gen protos/chatkore/v1/*.proto
COPY services/ services/
COPY edge/ edge/
COPY migrations/ migrations/
RUN /opt/venv/bin/python -m compileall -q /opt/venv /src/gen /src/services /src/edge

FROM python:3.11-slim-bookworm AS runtime
# checkov:skip=CKV_DOCKER_2: Kubernetes probes (native gRPC health, /readyz) check each process; see deploy/k8s.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/gen:/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 chatkore \
    && useradd --system --no-log-init --uid 10001 --gid chatkore --no-create-home --shell /usr/sbin/nologin chatkore
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /src/gen gen
COPY --from=build /src/services services
COPY --from=build /src/edge edge
COPY --from=build /src/migrations migrations
USER 10001:10001

FROM runtime AS auth
EXPOSE 50051 9464
CMD ["python", "-m", "services.auth"]

FROM runtime AS billing
EXPOSE 50052 9464
CMD ["python", "-m", "services.billing"]

FROM runtime AS inference
EXPOSE 50053 9464
CMD ["python", "-m", "services.inference"]

FROM runtime AS migrate
CMD ["python", "-m", "services.migrate"]

# The last target is the default one: `docker build .` gives the edge.
FROM runtime AS edge
COPY --from=web /web/node_modules edge/web/node_modules
ENV CHATKORE_HOST=0.0.0.0 CHATKORE_HTTP_PORT=8080
EXPOSE 8080 9464
CMD ["python", "-m", "edge"]
