# rdsrecorder: slim, non-root, healthchecked.
#
#   docker build -t rdsrecorder .                          # the product (default target): no lab
#   docker build --target lab -t rdsrecorder-lab .         # plus the lab's extra (moto, SeaweedFS)
#
# The default image installs the package without the [lab] extra: `rdsrecorder lab ...` there says
# which extra it needs and exits 2. The lab image serves `rdsrecorder lab serve` for
# `docker compose --profile lab up` and demos (docs/lab.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rdsrecorder ./rdsrecorder
COPY rdsrecorder_lab ./rdsrecorder_lab
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM build AS build-lab
RUN /opt/venv/bin/pip install --no-cache-dir ".[lab]"

FROM python:3.11-slim AS base
# A numeric USER, so that Kubernetes' runAsNonRoot can check it without a runAsUser. /tmp stays
# world-writable (sticky): multipart parts are spooled there; with a read-only root file system
# mount a volume on it (deploy/k8s does, with an emptyDir).
RUN groupadd --gid 10001 rdsrecorder \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin rdsrecorder \
 && chmod 1777 /tmp
USER 10001:10001
WORKDIR /home/rdsrecorder
# HOME is set, not derived from the user: run with `--user "$(id -u):$(id -g)"` (so that a 0600
# ~/.aws/credentials bind-mounted from the host is readable) and ~/.aws is still the mount at
# /home/rdsrecorder/.aws (docs/operations.md, "Credentials from a file").
ENV HOME=/home/rdsrecorder \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RDSRECORDER_LOG_FORMAT=json \
    RDSRECORDER_METRICS_PORT=9445
ENTRYPOINT ["rdsrecorder"]
CMD ["--help"]

FROM base AS lab
COPY --from=build-lab /opt/venv /opt/venv
EXPOSE 8080 9000
CMD ["lab", "serve", "--host", "0.0.0.0"]

# The default target comes last.
FROM base AS product
COPY --from=build /opt/venv /opt/venv
EXPOSE 9445
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RDSRECORDER_METRICS_PORT', '9445'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
