# The MLflow tracking server of docker/compose.yaml: PostgreSQL backend, artifacts served from
# a volume, basic auth on. Credentials come from secret files at run time (mlflow-entrypoint.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG MLFLOW_VERSION=3.17.2
ARG MLFLOW_UID=10002

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PATH=/opt/mlflow/bin:${PATH}

RUN python3 -m venv /opt/mlflow \
 && /opt/mlflow/bin/pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==2.9.13" \
 && useradd --uid "${MLFLOW_UID}" --create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlartifacts \
 && chown mlflow /mlartifacts

COPY docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint

USER ${MLFLOW_UID}
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow-entrypoint"]
