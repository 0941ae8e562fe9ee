"""Settings for Kling Relay.

Every value comes from the environment, with defaults that run the relay locally on an
embedded SQLite database. docs/deployment.md lists what production must set.
"""

import ipaddress
import os
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

# A fixed development key is only acceptable when nothing is public; production must set
# SECRET_KEY, because callback tokens and sessions are derived from it.
SECRET_KEY = (
    os.environ.get("SECRET_KEY") or "django-insecure-dev-only-key-set-SECRET_KEY-in-production"
)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "klingrelay.apps.RelayAdminConfig",  # django.contrib.admin with the dashboard pages
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "django_tasks",
    "django_tasks_db",
    "channels_app",
    "billing",
    "videos",
]

MIDDLEWARE = [
    "klingrelay.middleware.RequestIdMiddleware",
    "klingrelay.middleware.AccessLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "klingrelay.middleware.KlingErrorMiddleware",
]

ROOT_URLCONF = "klingrelay.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "klingrelay.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "charset": "utf8mb4",
            # READ COMMITTED: a row lock taken with select_for_update always sees the
            # latest committed quota, and gap locks do not serialise unrelated inserts.
            "isolation_level": "read committed",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
        }
    )
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Writers queue for the database lock instead of failing at once, and
            # BEGIN IMMEDIATE takes it up front, so read-then-write flows never deadlock.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests use a file, not memory: live_server would share an in-memory database's single
    # connection between its request threads, and concurrent requests would then fail with
    # "table is locked". The pid keeps simultaneous runs apart.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"klingrelay-test-{os.getpid()}.sqlite3")
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
# WhiteNoise serves static files from gunicorn. Without DEBUG it serves the hashed,
# compressed copies `manage.py collectstatic` writes to STATIC_ROOT (cacheable for good, so
# collectstatic must run before every start of a new version). Under DEBUG, runserver
# serves them straight from the apps' folders. Tests use the plain storage (conftest.py).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Base64 images make Kling bodies large (up to 4 images of 10 MB each); anything
# larger than this is refused with Kling's parameter error before it is read.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("KLING_MAX_BODY_BYTES", 64 * 1024 * 1024)

# HTTPS=on in production (behind a TLS-terminating proxy that sets X-Forwarded-Proto):
# redirects, HSTS and secure cookies, so `manage.py check --deploy` is clean. Off by
# default so the relay runs on plain http://127.0.0.1 locally.
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Kling posts callbacks and health checks may come over plain http from inside.
    SECURE_REDIRECT_EXEMPT = [r"^kling/internal/callback$", r"^healthz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["billing.authentication.RelayKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # OPTIONS would describe the views; Kling answers unknown methods with 404 / 1202.
    "DEFAULT_METADATA_CLASS": None,
    "EXCEPTION_HANDLER": "klingrelay.errors.kling_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI description of the relay's own surface (videos/schema.py), served at /api/schema/
# with Swagger UI at /api/docs/. Both are public: they document the API, they grant nothing.
SPECTACULAR_SETTINGS = {
    "TITLE": "Kling Relay API",
    "DESCRIPTION": (
        "Kling's video API as the relay serves it under `/kling`: bodies, responses, status "
        "codes and error codes are Kling's. The relay adds `POST /kling/v1/videos/batch-query`, "
        "the short query form `GET /kling/v1/videos/{task_id}`, and the callback endpoint "
        "Kling posts to. Request and response objects are open: fields not listed here are "
        "passed through to and from Kling untouched."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # No authentication at all on the schema and docs: a stale Authorization header a
    # browser or SDK sends along must not turn the documentation into a 401.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Kling reuses field names for different choice sets; each set gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "VideoModeEnum": "videos.schema.VIDEO_MODES",
        "VideoDurationEnum": "videos.schema.VIDEO_DURATIONS",
        "OmniVideoDurationEnum": "videos.schema.OMNI_VIDEO_DURATIONS",
        "LipSyncModeEnum": "videos.schema.LIP_SYNC_MODES",
    },
}

# --- Kling relay -------------------------------------------------------------------
# Public base URL of this relay (e.g. https://relay.example.com). Callback URLs given to
# Kling are built from it; when it is empty no callback_url is sent and tasks are
# followed by queries only.
SERVER_ADDRESS = os.environ.get("SERVER_ADDRESS", "").rstrip("/")
if SERVER_ADDRESS and not SERVER_ADDRESS.startswith(("http://", "https://")):
    raise ImproperlyConfigured("SERVER_ADDRESS must start with http:// or https://")

KLING_DEFAULT_BASE_URL = os.environ.get(
    "KLING_DEFAULT_BASE_URL", "https://api-singapore.klingai.com"
).rstrip("/")
KLING_CONNECT_TIMEOUT = env_float("KLING_CONNECT_TIMEOUT", 5.0)
KLING_READ_TIMEOUT = env_float("KLING_READ_TIMEOUT", 60.0)
# How many channels one submit may try before giving up (network errors, 5xx, limits).
KLING_MAX_ATTEMPTS = env_int("KLING_MAX_ATTEMPTS", 3)
# Kling tokens live 30 minutes; a cached token is renewed this many seconds before expiry.
KLING_TOKEN_TTL = env_int("KLING_TOKEN_TTL", 1800)
KLING_TOKEN_RENEW_BEFORE = env_int("KLING_TOKEN_RENEW_BEFORE", 300)

# plain: readable lines for local runs; json: one JSON object per line for log collectors,
# with the request id and the access log's fields (klingrelay/logging.py).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower() or "plain"
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "klingrelay.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Every 4xx is already one klingrelay.access line; Django would add a WARNING.
        "django.request": {"level": "ERROR"},
    },
}
# Clock skew tolerated on consumers' Kling-style JWTs (exp / nbf), in seconds.
CONSUMER_JWT_LEEWAY = env_int("CONSUMER_JWT_LEEWAY", 10)

# --- Background work -----------------------------------------------------------------
# Django's tasks API (the django-tasks backport). The database backend needs nothing but
# the database; `python manage.py db_worker` runs the queue, on as many machines as wanted.
TASKS = {
    "default": {
        "BACKEND": os.environ.get("TASKS_BACKEND", "django_tasks_db.DatabaseBackend"),
        "QUEUES": ["default"],
    }
}

# --- Callbacks forwarded to consumers -------------------------------------------------
# Hosts (names or IPs) a consumer's callback_url may use even though they resolve to a
# private, loopback or link-local address: for on-premise consumers.
CONSUMER_CALLBACK_ALLOWED_HOSTS = env_list("CONSUMER_CALLBACK_ALLOWED_HOSTS")
CONSUMER_CALLBACK_TIMEOUT = env_float("CONSUMER_CALLBACK_TIMEOUT", 10.0)
# Retries back off exponentially from FIRST_RETRY up to MAX_INTERVAL, and stop once the
# first attempt is older than GIVE_UP_AFTER.
CONSUMER_CALLBACK_FIRST_RETRY = env_float("CONSUMER_CALLBACK_FIRST_RETRY", 15.0)
CONSUMER_CALLBACK_MAX_INTERVAL = env_float("CONSUMER_CALLBACK_MAX_INTERVAL", 3600.0)
CONSUMER_CALLBACK_GIVE_UP_AFTER = env_float("CONSUMER_CALLBACK_GIVE_UP_AFTER", 25 * 3600.0)

# The relay's batch query extension: ids per call, and upstream queries run at once.
BATCH_QUERY_MAX = env_int("BATCH_QUERY_MAX", 100)
BATCH_QUERY_CONCURRENCY = env_int("BATCH_QUERY_CONCURRENCY", 8)

# --- Reconciliation (python manage.py reconcile) --------------------------------------
# An unfinished task with no news for this long is asked of Kling; fruitless checks back
# off exponentially up to RECONCILE_MAX_INTERVAL.
RECONCILE_AFTER = env_int("RECONCILE_AFTER", 120)
RECONCILE_MAX_INTERVAL = env_int("RECONCILE_MAX_INTERVAL", 1800)
# A task still pending this long after creation lost its submit (the relay died while
# calling Kling): it is looked up at Kling by external_task_id, then adopted or failed.
# Longer than the slowest submit: KLING_MAX_ATTEMPTS × (connect + read timeout).
RECONCILE_PENDING_AFTER = env_int(
    "RECONCILE_PENDING_AFTER",
    int(KLING_MAX_ATTEMPTS * (KLING_CONNECT_TIMEOUT + KLING_READ_TIMEOUT)) + 60,
)
# Unfinished tasks older than this are failed and their reservation released.
TASK_MAX_AGE = env_int("TASK_MAX_AGE", 24 * 3600)
RECONCILE_BATCH = env_int("RECONCILE_BATCH", 200)
# An unfinished task with no news for this long counts as stuck (dashboard, alerts).
STUCK_AFTER = env_int("STUCK_AFTER", 1800)

# --- Monitoring: GET /metrics, GET /healthz, alerts -----------------------------------
# When set, GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`. When empty, only
# direct (not proxied) requests from METRICS_ALLOWED_IPS (addresses or networks) get it.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", "127.0.0.1,::1")
for _network in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_network!r} is not an address") from None

# check_alerts (run after every reconcile pass, and by `manage.py check_alerts`) warns
# when a count reaches its threshold; 0 turns that alert off. Failed callbacks are
# counted over the last hour, failed charges over tasks finished in the last day.
ALERT_STUCK_TASKS = env_int("ALERT_STUCK_TASKS", 10)
ALERT_FAILED_CALLBACKS = env_int("ALERT_FAILED_CALLBACKS", 20)
ALERT_FAILED_CHARGES = env_int("ALERT_FAILED_CHARGES", 1)
ALERT_DISABLED_CHANNELS = env_int("ALERT_DISABLED_CHANNELS", 1)
# When set, alerts are also POSTed there as JSON ({"text", "counts", "thresholds"}: a
# Slack-compatible incoming webhook works), at most once per ALERT_REPEAT_SECONDS per kind.
ALERT_WEBHOOK_URL = os.environ.get("ALERT_WEBHOOK_URL", "")
ALERT_REPEAT_SECONDS = env_int("ALERT_REPEAT_SECONDS", 3600)
ALERT_WEBHOOK_TIMEOUT = env_float("ALERT_WEBHOOK_TIMEOUT", 10.0)

# --- Hot-path caches (per process) -------------------------------------------------------
# API keys are cached this long after a lookup; revoking a key takes effect within it.
# 0 turns the cache off.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 30.0)
