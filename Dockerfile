# syntax=docker/dockerfile:1.7
# The controller image: `canary controller` (the Kubernetes controller) and every other `canary` command.
#
#   docker build -t stack-canary-controller:0.1.0 .
#
# Stage 1 builds wheels of the project and its dependencies; stage 2 installs them from those wheels
# only (no index, no compiler, no pip left behind) and runs as an unprivileged numeric user, so
# `runAsNonRoot` can verify it. The base is pinned by version; pin it by digest too in your registry.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY analysis ./analysis
COPY controller ./controller
COPY searchstack ./searchstack
COPY localmesh ./localmesh
COPY demo ./demo
# Binary wheels for numpy/scipy come from PyPI: nothing is compiled here either.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels stack-canary==0.1.0 \
    && pip uninstall --yes pip setuptools wheel \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin canary
USER 10001:10001
WORKDIR /tmp
# 8080 (--health-port): /healthz, /readyz and /metrics.
EXPOSE 8080
ENTRYPOINT ["canary"]
CMD ["controller"]
