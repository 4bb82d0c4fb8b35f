# syntax=docker/dockerfile:1
# rlm-proxy image: the package in a virtualenv on python:3.11-slim, run as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: every dependency ships manylinux wheels, so no compiler is needed; the stage only keeps pip's
# work and the source tree out of the final image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/rlm-proxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY sandbox ./sandbox
COPY bench ./bench
# A regular (not editable) install: the source tree is not copied into the final image.
RUN /opt/rlm-proxy/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rlm-proxy" \
      org.opencontainers.image.description="OpenAI-compatible LLM proxy with Recursive Language Model mode"
# Fixed ids so that volumes and Kubernetes securityContext (runAsUser/fsGroup) can refer to them.
RUN groupadd --system --gid 10001 rlm \
    && useradd --system --uid 10001 --gid rlm --home-dir /home/rlm --create-home --shell /usr/sbin/nologin rlm
COPY --from=build /opt/rlm-proxy /opt/rlm-proxy
# The sandbox workers' seccomp filter needs libseccomp2, which the base image carries (apt depends on it):
# the build fails here the day it does not. The rlm-sandbox user is for `sandbox.worker_user` (README:
# threat model); it owns nothing.
RUN /opt/rlm-proxy/bin/python -c "import pyseccomp" \
    && groupadd --system --gid 10002 rlm-sandbox \
    && useradd --system --uid 10002 --gid rlm-sandbox --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rlm-sandbox
# Bytecode was compiled at install time, so the root filesystem can be mounted read-only.
# LITELLM_LOCAL_MODEL_COST_MAP: use the price map bundled with litellm instead of fetching one at start-up.
ENV PATH=/opt/rlm-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
USER 10001:10001
WORKDIR /home/rlm
EXPOSE 4000
# slim has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/livez', timeout=2)"]
CMD ["rlm-proxy", "serve", "--host", "0.0.0.0", "--port", "4000"]
