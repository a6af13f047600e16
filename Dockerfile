# pixelserve: the API replicas and the training worker (same image, another command).
# CPU-only PyTorch, no torchvision: the worker trains from IDX files mounted at PIXELSERVE_DATA_DIR.
FROM python:3.11-slim

# Real builds take torch from the PyTorch CPU index; an empty value means pip's default index
# (offline builds pass PIP_FIND_LINKS, a folder of wheels that holds torch).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
# The CPU wheel keeps the image at ~1.3 GB (the CUDA build the Makefile's venv gets is several GB);
# the shipped artifacts, made with 2.14.1, load and answer under it: .ci/run's container check
# predicts through the built image, and tests/test_image_requirements.py keeps this inside pyproject's range.
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/pixelserve

# Dependencies first, in their own layers: a code change does not reinstall torch.
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} \
        "torch==${TORCH_VERSION}"
COPY deploy/requirements.txt deploy/requirements.txt
RUN pip install ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} -r deploy/requirements.txt \
    && useradd --system --uid 10001 --home-dir /srv/pixelserve pixelserve
COPY app app
COPY training training
COPY --chown=pixelserve:pixelserve models models

USER 10001
ENV PIXELSERVE_MODEL_REPOSITORY=/srv/pixelserve/models \
    PIXELSERVE_DRAIN_S=5 \
    PIXELSERVE_SHUTDOWN_GRACE_S=20
# New versions published by training jobs must reach every replica: mount a shared volume here.
VOLUME ["/srv/pixelserve/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
# Exec form: the server is PID 1's child-free process and gets SIGTERM itself (graceful drain).
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
