# rdsrecorder: slim, non-root, healthchecked. The `lab` extra (moto, SeaweedFS) is included so the
# same image can run `rdsrecorder lab serve` for `docker compose --profile lab up`;
# build with --build-arg EXTRAS= for a smaller image without it.
FROM python:3.11-slim AS build
ARG EXTRAS=lab
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rdsrecorder ./rdsrecorder
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
# A numeric USER, so that Kubernetes' runAsNonRoot can check it without a runAsUser. /tmp stays
# world-writable (sticky): multipart parts are spooled there; with a read-only root file system
# mount a volume on it (deploy/k8s does, with an emptyDir).
RUN groupadd --gid 10001 rdsrecorder \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin rdsrecorder \
 && chmod 1777 /tmp
USER 10001:10001
WORKDIR /home/rdsrecorder
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RDSRECORDER_LOG_FORMAT=json \
    RDSRECORDER_METRICS_PORT=9445
EXPOSE 9445
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RDSRECORDER_METRICS_PORT', '9445'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["rdsrecorder"]
CMD ["--help"]
