# The GPU worker: a CUDA PyTorch runtime base plus the Diffusers stack; entry `df worker`.
#
# transformers 5 needs torch >= 2.6 and silently disables torch below it, so the base must ship
# torch 2.6 or newer (the plan's pytorch/pytorch:2.3.1 would leave the worker unable to load
# SDXL). The default base carries CUDA 12.8: it wants an NVIDIA driver >= 570 on the host
# (>= 525.60 works through CUDA's minor-version compatibility, without PTX JIT).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    DF_DATA_DIR=/data \
    DF_MODELS_ROOT=/models

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 dreamforge \
    && useradd --system --uid 10001 --gid dreamforge --home-dir /app --shell /usr/sbin/nologin dreamforge \
    && mkdir -p /app /data /models && chown dreamforge:dreamforge /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dreamforge ./dreamforge
# The base's torch satisfies the extra's torch>=2.6, so pip keeps it instead of pulling another;
# the extra itself pins diffusers and transformers (pyproject.toml), which hadolint can't see.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[diffusers]" \
    && python -c "import torch, diffusers, transformers; \
from transformers.utils import is_torch_available; \
assert is_torch_available(), 'transformers cannot see torch ' + torch.__version__; \
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

USER 10001:10001
# `df worker` drains on SIGTERM itself (the current job finishes within DF_SHUTDOWN_GRACE_S, then
# is handed back to the queue), so `docker stop` is graceful; compose gives it a longer grace.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["df", "status", "--json"]
CMD ["df", "worker"]
