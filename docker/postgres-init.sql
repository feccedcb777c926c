-- The MLflow basic-auth user store lives in its own database next to the tracking store.
CREATE DATABASE mlflow_auth;
