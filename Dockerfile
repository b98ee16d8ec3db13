# syntax=docker/dockerfile:1
# One image for every role, chosen by the command (ENTRYPOINT is the `workfloo-bridge` CLI):
#   receiver            (default)  serve --host 0.0.0.0 --port 8000
#   worker pool                    worker            (RQ worker on the bridge queue)
#   scheduler/reconciler           scheduler         (single replica)
# Build: docker build -t workfloo-bridge:0.1.0 .   (see docs/operations.md)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILDER_IMAGE=python:3.11-bookworm

# --- builder: the full Debian image has gcc and headers for any dependency without a wheel ------
FROM ${BUILDER_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# The locked dependencies (hashes checked) get a layer of their own, rebuilt only when a lock changes: a
# code change reuses it. The build backend goes into the builder's own Python, never into /opt/venv.
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements/runtime.lock \
 && python -m pip install --no-cache-dir --require-hashes -r requirements/build.lock
# Then the code: two wheels, the consumer package (consumer/, which workers.fanout runs) and the bridge
# with receiver/ and workers/ but not the sandbox (pyproject.toml excludes workers.sandbox); installed
# without resolving again, then checked against the locked dependencies.
COPY consumer/pyproject.toml consumer/README.md consumer/LICENSE ./consumer/
COPY consumer/src ./consumer/src
COPY pyproject.toml README.md LICENSE ./
COPY receiver ./receiver
COPY workers ./workers
RUN python -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels ./consumer . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m compileall -q /opt/venv

# --- runtime: slim, no compilers, no pip cache, non-root ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="workfloo-bridge" \
      org.opencontainers.image.description="Kiban workfloo -> Kompliant webhook receiver and event bridge"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_LOG_FORMAT=json
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin bridge
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# For the receiver role. Worker and scheduler containers have no HTTP port: compose and the
# Kubernetes manifests override or disable this check for them.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["workfloo-bridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
