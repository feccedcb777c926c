#!/bin/sh
# Start the MLflow tracking server with basic auth, reading every credential from a file
# (docker secrets) so that none is in the image, the compose file or `docker inspect`.
#   POSTGRES_PASSWORD_FILE          password of the PostgreSQL user POSTGRES_USER
#   MLFLOW_AUTH_ADMIN_PASSWORD_FILE password of the MLflow admin user (created on first start)
#   MLFLOW_FLASK_SERVER_SECRET_KEY_FILE (optional) the auth app's CSRF key; default: random per start
set -eu

read_secret() {
    if [ ! -r "$1" ]; then
        echo "mlflow-entrypoint: cannot read secret file $1" >&2
        exit 2
    fi
    tr -d '\r\n' < "$1"
}

PGPASS="$(read_secret "${POSTGRES_PASSWORD_FILE:?set POSTGRES_PASSWORD_FILE}")"
MLFLOW_AUTH_ADMIN_PASSWORD="$(read_secret "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:?set MLFLOW_AUTH_ADMIN_PASSWORD_FILE}")"
export MLFLOW_AUTH_ADMIN_PASSWORD
# The basic-auth app's CSRF key, one for all workers: from MLFLOW_FLASK_SERVER_SECRET_KEY_FILE
# when given, else a new random one at each start (open UI forms then need a reload).
if [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:-}" ]; then
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(read_secret "$MLFLOW_FLASK_SERVER_SECRET_KEY_FILE")"
else
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
PGPASS_URL="$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PGPASS")"
PG="postgresql+psycopg2://${POSTGRES_USER:-mlflow}:${PGPASS_URL}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}"

# MLflow reads the ini with configparser, where '%' starts an interpolation: the URL-quoted
# password's '%XX' escapes are written as '%%XX'.
PG_INI="$(printf '%s' "$PG" | sed 's/%/%%/g')"

umask 077
AUTH_INI="$(mktemp -d)/basic_auth.ini"
cat > "$AUTH_INI" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${PG_INI}/${POSTGRES_AUTH_DB:-mlflow_auth}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI"

exec mlflow server \
    --backend-store-uri "${PG}/${POSTGRES_DB:-mlflow}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --serve-artifacts \
    --app-name basic-auth \
    --host 0.0.0.0 --port 5000 \
    --workers "${MLFLOW_WORKERS:-2}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}" \
    "$@"
