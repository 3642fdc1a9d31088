# syntax=docker/dockerfile:1
# Build stage: compile fastcore's Cython extension into a wheel, with every dependency as a wheel.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastcore ./fastcore
COPY settlement ./settlement
COPY gateway ./gateway
COPY processor ./processor
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
# 8000: the partners' port, HTTPS when GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE name a certificate and
# its key (mount them read-only). 9101: the operations listener (/metrics, /health), on the container's
# loopback unless GATEWAY_OPS_HOST says otherwise (docker-compose.yml: 0.0.0.0, for Prometheus on the compose
# network); /metrics names every partner: publish 9101 on the host's loopback at most, never `-P`.
EXPOSE 8000 9101
# on the operations port: plain HTTP whether or not the partners' port is HTTPS
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_OPS_PORT', '9101'), timeout=2).status != 200)"]
# `gateway check` first: a bad setting (one TLS file without the other, a key that is not the
# certificate's) stops the container with its name, before Granian starts workers that would fail one by
# one. Then the one launcher (`python -m gateway serve`, as make run, the tests and the benchmarks start the
# gateway): Granian's options, TLS from GATEWAY_TLS_*, a dead worker replaced at once. The arguments of CMD
# (or compose's `command`) are the launcher's (--workers N) or Granian's own, after its.
ENTRYPOINT ["sh", "-c", "python -m gateway check && exec python -m gateway serve --host 0.0.0.0 --port 8000 \"$@\"", "gateway"]
CMD ["--workers", "2"]
