# wqd in a container: `docker build -t wqd .`, then
#   docker run -d --name wqd -e WQD_BROKER_URL=amqp://user:pass@rabbitmq:5672/%2F \
#     -p 9808:9808 --stop-timeout 45 wqd
# The default config is etc/docker/wqd.yaml; mount your own on /etc/wqd/wqd.yaml.
# The ledger of finished messages (duplicate suppression) is written to
# /var/lib/wqd at stop: it survives `docker restart`; for it to survive a new
# container too, mount a volume there (-v wqd-state:/var/lib/wqd).
# Handlers: build FROM this image and pip install the package that holds them
# (see docs/deployment.md). Give `docker stop` more than graceful_timeout
# (--stop-timeout 45, compose stop_grace_period: 45s, Kubernetes
# terminationGracePeriodSeconds: 45): its default of 10 s cuts long tasks short.
# BuildKit builds it (RUN --mount): the default since Docker 23, DOCKER_BUILDKIT=1
# before. No `# syntax=` line: the built-in frontend is enough, and that line
# would pull docker/dockerfile from Docker Hub first, failing offline builds.

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the wqd wheel and the wheels of its dependencies --
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN pip wheel --wheel-dir /wheels .

# -- the image: the wheels installed, nothing to build with, no source --
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATE_DIRECTORY=/var/lib/wqd
# The wheels are mounted for this one step, so no layer keeps them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --root-user-action=ignore wqd \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wqd \
 && install -d -m 0700 -o wqd -g wqd /var/lib/wqd
COPY etc/docker/wqd.yaml /etc/wqd/wqd.yaml
COPY etc/docker/healthcheck.py /usr/local/lib/wqd/healthcheck.py
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 9808
# wqd's graceful stop: finish current tasks, ack, exit 0.
STOPSIGNAL SIGTERM
# /healthz answers 200 while the master's loop runs (slim has no curl). The
# script asks the address the config's metrics.listen names, so a container on
# the host's network (--network host) can listen on 127.0.0.1 and a port of its own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/wqd/healthcheck.py"]
CMD ["wqd", "run", "-c", "/etc/wqd/wqd.yaml"]
