# syntax=docker/dockerfile:1.7
# cxr-triage-node: one image, several entry points
#   triage-node serve | scp | worker --queues inference|delivery | api | db upgrade
#
# Targets:
#   cpu (default)  python slim + the project's `cpu` extra (onnxruntime)
#                  docker build -t cxr-triage-node:cpu .
#   gpu            CUDA 13 + cuDNN 9 runtime + the project's `gpu` extra
#                  (onnxruntime-gpu[cuda,cudnn]; current onnxruntime-gpu wheels on PyPI
#                  are built for CUDA 13: their `cuda` extra needs nvidia-cuda-runtime~=13.0
#                  and nvidia-cudnn-cu13~=9.0). Needs a host driver that supports CUDA 13.
#                  docker build --target gpu -t cxr-triage-node:gpu .
#
# The entry point (deploy/docker-entrypoint.sh) applies the database migrations before
# `scp`, `worker` and `api` (Alembic upgrade is idempotent; `serve` migrates itself),
# then execs `triage-node` with the container's arguments. MIGRATE_ON_START=0 turns
# that off. The health check (deploy/healthcheck.py) asks GET /healthz on the HTTP
# port for `serve` and `api`, opens the DICOM port for `scp`, and reaches the broker
# for `worker`.

ARG PYTHON_VERSION=3.12
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---- the package sources, nothing else -------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicom_scp ./dicom_scp
COPY models ./models
COPY triage ./triage
COPY worklist ./worklist

# ---- CPU: build a virtual environment with the `cpu` extra -----------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu-build
COPY --from=source /src /src
WORKDIR /src
RUN python -m venv /opt/triage \
    && /opt/triage/bin/pip install --no-cache-dir '.[cpu]'

# ---- GPU: the CUDA runtime base with a Python to run the node --------------------
FROM ${CUDA_IMAGE} AS gpu-base
ARG DEBIAN_FRONTEND=noninteractive
# The distribution's python3 (3.12 on Ubuntu 24.04); versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
COPY --from=source /src /src
WORKDIR /src
RUN python3 -m venv /opt/triage \
    && /opt/triage/bin/pip install --no-cache-dir '.[gpu]'

# ---- GPU runtime -----------------------------------------------------------------
FROM gpu-base AS gpu
ENV PATH=/opt/triage/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRIAGE_DATA_DIR=/var/lib/triage/data
RUN groupadd --system --gid 10001 triage \
    && useradd --system --uid 10001 --gid triage --home-dir /var/lib/triage \
        --create-home --shell /usr/sbin/nologin triage \
    && install -d -o triage -g triage -m 0750 /var/lib/triage/data
COPY --from=gpu-build /opt/triage /opt/triage
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/triage-entrypoint
COPY --chmod=0644 deploy/healthcheck.py /opt/triage/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/triage
VOLUME ["/var/lib/triage/data"]
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/triage/healthcheck.py"]
ENTRYPOINT ["triage-entrypoint"]
CMD ["worker", "--queues", "inference"]

# ---- CPU runtime (the default target: last in the file) --------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu
ENV PATH=/opt/triage/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRIAGE_DATA_DIR=/var/lib/triage/data
RUN groupadd --system --gid 10001 triage \
    && useradd --system --uid 10001 --gid triage --home-dir /var/lib/triage \
        --create-home --shell /usr/sbin/nologin triage \
    && install -d -o triage -g triage -m 0750 /var/lib/triage/data
COPY --from=cpu-build /opt/triage /opt/triage
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/triage-entrypoint
COPY --chmod=0644 deploy/healthcheck.py /opt/triage/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/triage
VOLUME ["/var/lib/triage/data"]
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/triage/healthcheck.py"]
ENTRYPOINT ["triage-entrypoint"]
CMD ["serve"]
