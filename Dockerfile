# syntax=docker/dockerfile:1
#
# vqserve container image. Two variants from one file, chosen by build arguments:
#
#   GPU (default):  docker build -t vqserve:gpu .
#   slim CPU:       docker build -t vqserve:cpu \
#                     --build-arg BASE_IMAGE=ubuntu:24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# Both variants share one Ubuntu 24.04 userland (the CUDA runtime image is Ubuntu 24.04 too), so the
# interpreter path the virtual environment points at is the same in the builder and the final stage.
# The builder installs the project from the pinned lock into /opt/venv with deploy/docker/install.sh (the
# script tests/deploy/test_install.py runs outside a container); the final stage copies only that venv:
# no compilers, no pip cache, no source tree. The shipped checkpoints (model/weights/) are package data, so
# they are baked into the venv; other checkpoints come in through the /models volume and VQSERVE_MODEL_PATH.

ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# CPU wheels come from the PyTorch CPU index (no CUDA libraries, a much smaller image); the default index's
# Linux torch 2.13.0 wheel is the CUDA 13 build (its nvidia-*-cu13 dependencies are pinned exactly by torch),
# which is what the GPU image wants, matching the CUDA 13 runtime base.
ARG TORCH_INDEX_URL=""
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.* python3.12-venv=3.12.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# dependency declarations first: the layer below is rebuilt only when the lock or the sources change
COPY pyproject.toml constraints.txt README.md ./
COPY deploy/docker/install.sh deploy/docker/install.sh
COPY model/ model/
COPY service/ service/
RUN PYTHON=python3.12 TORCH_INDEX_URL="${TORCH_INDEX_URL}" sh deploy/docker/install.sh /opt/venv /src

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="vqserve" \
      org.opencontainers.image.description="Serve diffusers-compatible VQModel autoencoders over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0"

# only the interpreter: no -dev headers, no compilers, no pip cache; a fixed uid/gid so Kubernetes'
# runAsNonRoot can verify it and volumes can be chowned to it
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vqserve \
    && useradd --system --uid 10001 --gid vqserve --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vqserve \
    && mkdir -p /models \
    && chown vqserve:vqserve /models

COPY --from=builder /opt/venv /opt/venv

# HOME and temp files under /tmp: with a read-only root filesystem /tmp is the one writable mount (emptyDir)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    VQSERVE_HOST=0.0.0.0 \
    VQSERVE_PORT=8000

# checkpoints other than the shipped ones: mount a diffusers-format directory and set VQSERVE_MODEL_PATH
VOLUME ["/models"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# liveness only (readiness is /readyz, for orchestrators); Python's urllib, so the image needs no curl
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('VQSERVE_PORT', '8000') + '/healthz', timeout=4)"]

# exec form: python is PID 1 and receives SIGTERM itself, which starts the service's graceful drain
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
