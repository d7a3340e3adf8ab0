# syntax=docker/dockerfile:1
# One image, several entry points: `triage-node serve | scp | worker | api | db upgrade`.
# Targets: `cpu` (default) and `gpu` (CUDA 12 runtime, onnxruntime-gpu).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY triage ./triage
COPY dicom_scp ./dicom_scp
COPY worklist ./worklist
COPY models ./models
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[cpu]'

FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu
RUN useradd --system --uid 10001 --home-dir /var/lib/triage --create-home triage
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER triage
ENV TRIAGE_DATA_DIR=/var/lib/triage/data
VOLUME ["/var/lib/triage/data"]
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["triage-node"]
CMD ["serve"]

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/triage --create-home triage
COPY --from=build /src /src
RUN python3 -m venv /opt/triage \
    && /opt/triage/bin/pip install --no-cache-dir '/src[gpu]' \
    && rm -rf /src
ENV PATH=/opt/triage/bin:$PATH TRIAGE_DATA_DIR=/var/lib/triage/data
USER triage
VOLUME ["/var/lib/triage/data"]
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["triage-node"]
CMD ["worker", "--queues", "inference"]

FROM cpu AS default
