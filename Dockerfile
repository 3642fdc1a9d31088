# syntax=docker/dockerfile:1
# Build stage: compile fastcore's Cython extension into a wheel, with every dependency as a wheel.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastcore ./fastcore
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim, no compiler, a non-root user, Granian as the entrypoint.
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/gateway-metrics \
    GATEWAY_KAFKA_BOOTSTRAP=kafka:19092 \
    GATEWAY_REDIS_URL=redis://redis:6379/0 \
    GATEWAY_HOST=0.0.0.0
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# A worker that dies is replaced at once (the interval only paces graceful respawns; see deploy/run.sh).
ENTRYPOINT ["granian", "--interface", "asgi", "--factory", "gateway.api.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-ws", "--workers-kill-timeout", "15", "--respawn-failed-workers", "--respawn-interval", "5"]
CMD ["--workers", "2"]
