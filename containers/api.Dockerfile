# The API image: slim, no torch. `df serve` over the job service; workers run elsewhere.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DF_DATA_DIR=/data

RUN groupadd --system --gid 10001 dreamforge \
    && useradd --system --uid 10001 --gid dreamforge --home-dir /app --shell /usr/sbin/nologin dreamforge \
    && mkdir -p /app /data && chown dreamforge:dreamforge /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dreamforge ./dreamforge
# The API must stay free of torch: fail the build if anything pulled it in.
RUN pip install --no-cache-dir . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

USER 10001:10001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
CMD ["df", "serve", "--host", "0.0.0.0", "--port", "8001", "--no-worker"]
