# syntax=docker/dockerfile:1.7
# The reference search stack: one image for all five services, the role chosen at run time by
# SEARCHSTACK_ROLE (or `--role ROLE` as container args), listening on port 8000 like the seed's images.
#
#   docker build -f searchstack.Dockerfile -t stack-canary-searchstack:v1 .
#   docker run -e SEARCHSTACK_ROLE=keyword -p 8000:8000 stack-canary-searchstack:v1
#
# Fault knobs can be baked in for demos (hack/e2e-kind.sh builds a bad version this way):
#   docker build -f searchstack.Dockerfile --build-arg FAULT_ERROR_RATE=0.3 -t stack-canary-searchstack:v3 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY analysis ./analysis
COPY controller ./controller
COPY searchstack ./searchstack
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm AS runtime
ARG FAULT_ERROR_RATE=""
ARG FAULT_LATENCY_MS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEARCHSTACK_ROLE="" \
    FAULT_ERROR_RATE=${FAULT_ERROR_RATE} \
    FAULT_LATENCY_MS=${FAULT_LATENCY_MS}
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels stack-canary==0.1.0 \
    && pip uninstall --yes pip setuptools wheel \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin search
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# A shell only to expand SEARCHSTACK_ROLE; `exec` hands PID 1 (and SIGTERM) to the service itself.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m searchstack --host 0.0.0.0 --port 8000 ${SEARCHSTACK_ROLE:+--role \"$SEARCHSTACK_ROLE\"} \"$@\"", "searchstack"]
