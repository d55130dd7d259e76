# syntax=docker/dockerfile:1
# mqttgate: MQTT device gateway. Configured only by MQTTGATE_* environment
# variables (mqttgate serve --help lists them); see docs/operations.md.

# ---- build: install the package and its wheels into a virtual environment ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mqttgate
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mqttgate ./mqttgate
# Every dependency ships manylinux wheels for CPython 3.11: no compiler needed.
RUN /opt/mqttgate/bin/pip install --no-cache-dir . \
    && /opt/mqttgate/bin/mqttgate --version

# ---- runtime: the venv only, no build tools, non-root ----
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 mqttgate \
    && useradd --system --uid 10001 --gid mqttgate --home-dir /var/lib/mqttgate \
       --create-home --shell /usr/sbin/nologin mqttgate
COPY --from=build /opt/mqttgate /opt/mqttgate
ENV PATH=/opt/mqttgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MQTTGATE_MQTT_LISTEN=0.0.0.0:1883 \
    MQTTGATE_HTTP_LISTEN=0.0.0.0:9091 \
    MQTTGATE_DATA_DIR=/var/lib/mqttgate
WORKDIR /var/lib/mqttgate
USER 10001:10001
EXPOSE 1883 9091
# No curl in the slim image: Python asks /healthz on the configured HTTP port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MQTTGATE_HTTP_LISTEN', '0.0.0.0:9091').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mqttgate"]
CMD ["serve"]
