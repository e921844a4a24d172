# syntax=docker/dockerfile:1
# The plait base image: plait installed in /opt/plait, an unprivileged user, `plait` as entry point.
#
#   docker build -t plait:0.1.0 .
#
# Exported Flows run every process from it, or from an executor image built FROM it
# (docs/production.md): `plait executor --config /etc/plait/config.json`, `plait gateway --config ...`.
# Pinned to one Python release; pass --build-arg PYTHON_IMAGE=... to choose another (3.11 or later).
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/plait \
    && /opt/plait/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/plait/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/plait
COPY --from=build /opt/plait /opt/plait
# A numeric user, so Kubernetes' runAsNonRoot can check it; /app holds the user's files (the
# exported configs' relative paths start there), /workspace the executors' workspaces.
RUN groupadd --system --gid 10001 plait \
    && useradd --system --uid 10001 --gid plait --home-dir /home/plait --create-home plait \
    && mkdir -p /app /workspace \
    && chown plait:plait /app /workspace
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Docker and Compose check the gRPC health service with `plait ping`; Kubernetes exports use its
# native gRPC probes on the same service instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["plait", "ping", "127.0.0.1:8080"]
ENTRYPOINT ["plait"]
CMD ["--help"]
