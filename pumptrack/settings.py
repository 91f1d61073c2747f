"""pumptrack settings: one module, driven by environment variables.

Every variable is listed in `.env.example`. The defaults run anywhere (SQLite, Celery's
file-system broker); `DATABASE_URL` and `CELERY_BROKER_URL` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_HASHES
from django.core.exceptions import ImproperlyConfigured

from pumptrack.env import env_bool, env_decimal, env_decimal_list, env_int, env_list, env_str
from pumptrack.queues import task_routes

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PUMPTRACK_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)
# Earlier keys still accepted when checking signatures (calendar-feed and unsubscribe links,
# sessions) while a rotated SECRET_KEY takes over.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

# HTTPS: on in production behind TLS (`manage.py check --deploy` then has nothing to say);
# off for the embedded demo and tests, which speak plain http on loopback.
PUMPTRACK_HTTPS = env_bool("PUMPTRACK_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PUMPTRACK_HTTPS)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PUMPTRACK_HTTPS
# HSTS tells browsers never to use http again for this host: a year, subdomains and the
# preload list by default with HTTPS (lower SECURE_HSTS_SECONDS while trying it out).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PUMPTRACK_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PUMPTRACK_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PUMPTRACK_HTTPS)
# Behind a proxy that terminates TLS and sets X-Forwarded-Proto (nginx, a load balancer).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("PUMPTRACK_BEHIND_PROXY", False) else None
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "phonenumber_field",
    "axes",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "patients",
    "pumps",
    "notifications",
    "api",
    "integrations",
    "webhooks",
    "workspace",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "patients.middleware.ClinicTimezoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# ---- Audit history (issue 6, README "Audit history"): django-simple-history keeps who,
# when, what and why for every change to clinical, contact and access records. The
# middleware hands the request's user (admin session or API token) to the history rows;
# Celery and other system work records none and shows as "system". Reverting from the
# history page is off: clinical records change only through the services' rules.
INSTALLED_APPS += ["simple_history"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "simple_history.middleware.HistoryRequestMiddleware",
)
SIMPLE_HISTORY_REVERT_DISABLED = True
# Reasons are free text (a dose change's justification may be long): no 100-character cap.
SIMPLE_HISTORY_HISTORY_CHANGE_REASON_USE_TEXT_FIELD = True
# ---- end audit history

# Repeated failed logins lock that user name from that address out (django-axes): the admin
# form and the API's password endpoint both authenticate through these backends.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("PUMPTRACK_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("PUMPTRACK_LOGIN_LOCKOUT_MINUTES", 30, minimum=1))
# By user name and address together: a stranger cannot lock a nurse out from elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

# ---------------------------------------------------------------------------- two-factor and CSP
# (issue 6 hardening; kept in one block so the app and middleware lines are easy to find.)
# Staff may add an authenticator app (TOTP) with backup codes at /account/2fa/ (django-otp
# devices, our pages in twofactor/). With a device, the login asks for a code after the
# password and nothing else answers until it is given (twofactor.middleware). True in
# production: staff without a device are sent to enrol right after the password, and the
# API's password endpoint refuses them. Off by default so the demo runs as it is.
PUMPTRACK_REQUIRE_2FA = env_bool("PUMPTRACK_REQUIRE_2FA", False)
INSTALLED_APPS += ["django_otp", "django_otp.plugins.otp_totp", "django_otp.plugins.otp_static", "twofactor", "csp"]
MIDDLEWARE[MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1 : 0] = [
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified()
    "twofactor.middleware.TwoFactorGateMiddleware",  # a password-only session reaches only the code page
]
# Right after SecurityMiddleware: the header goes on every answer, errors included.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware")
# The name authenticator apps show next to the code.
OTP_TOTP_ISSUER = env_str("PUMPTRACK_2FA_ISSUER", "pumptrack")
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
# A strict content security policy on every answer (django-csp): scripts and style sheets
# only from this site, or inline ones carrying the page's nonce; images also as data: URIs
# (the enrolment QR code); no plug-ins, no framing, no forms posting elsewhere, no <base>.
_DRF_STYLE_ATTRIBUTES = (
    "float: right; margin-right: 10px",  # rest_framework/base.html: the Filters and Extra Actions buttons
    "float: right",  # rest_framework/filters/ordering.html: the current ordering's tick
    "border-bottom: 1px solid #e5e5e5",  # rest_framework/horizontal/*fieldset.html: nested forms
    "border-bottom: 0",
)


def _csp_hashes(sources: tuple[str, ...]) -> list[str]:
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in sources]


_CSP_DIRECTIVES = {
    "default-src": [SELF],
    "script-src": [SELF, NONCE],
    "style-src": [SELF, NONCE],
    # Style attributes: none of ours; only the few exact ones Django REST framework's browsable
    # API writes in its own templates, allowed by hash (no 'unsafe-inline' anywhere).
    "style-src-attr": [UNSAFE_HASHES, *_csp_hashes(_DRF_STYLE_ATTRIBUTES)],
    "img-src": [SELF, "data:"],
    "object-src": [NONE],
    "base-uri": [SELF],
    "frame-ancestors": [NONE],
    "form-action": [SELF],
}
if _csp_report_uri := env_str("PUMPTRACK_CSP_REPORT_URI"):
    _CSP_DIRECTIVES["report-uri"] = [_csp_report_uri]
# Report-only: browsers report what the policy would block and block nothing (try it on a
# deployment with its own templates first).
if env_bool("PUMPTRACK_CSP_REPORT_ONLY", False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": _CSP_DIRECTIVES}
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": _CSP_DIRECTIVES}

ROOT_URLCONF = "pumptrack.urls"
WSGI_APPLICATION = "pumptrack.wsgi.application"

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
                # The admin's red banner when a reminder sweep has stopped.
                "notifications.context_processors.sweep_health",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    # The embedded default: a SQLite file under var/, created on first use.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("es", "Español")]
# Stored datetimes are aware UTC; clinic and patient zones apply only to day boundaries.
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
FORMAT_MODULE_PATH = ["pumptrack.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

PHONENUMBER_DEFAULT_REGION = env_str("PHONENUMBER_DEFAULT_REGION") or None
PHONENUMBER_DB_FORMAT = "E164"

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "pumptrack <noreply@localhost>")

# ---------------------------------------------------------------------------- Celery
# Default: Celery's file-system transport, so web, worker and beat run with no server.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or None
# The queue tasks go to unless routed; a worker started with -Q <name> must share it.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Celery's Django fixup closes the database connection after every task unless this is set;
# reusing it halves the time a send task takes (bench/RESULTS.md). 0 restores closing.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 100, minimum=0) or None
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Opt-in: planning, email, SMS and webhooks each on a queue of its own (pumptrack/queues.py,
# docs/deployment.md), so each kind of worker can be sized and placed apart. Every process
# (web, workers, beat) needs the same values: each of them queues tasks.
PUMPTRACK_CELERY_QUEUES = env_bool("PUMPTRACK_CELERY_QUEUES", False)
# Put before the four queue names, e.g. "staging-": keeps two deployments (or a test run)
# on one Redis database from taking each other's tasks.
PUMPTRACK_CELERY_QUEUE_PREFIX = env_str("PUMPTRACK_CELERY_QUEUE_PREFIX")
if not re.fullmatch(r"[A-Za-z0-9_.:-]*", PUMPTRACK_CELERY_QUEUE_PREFIX):
    # A comma or a space would split the name in a worker's `-Q` list.
    raise ImproperlyConfigured(
        f"PUMPTRACK_CELERY_QUEUE_PREFIX={PUMPTRACK_CELERY_QUEUE_PREFIX!r}: use letters, digits and _ . : -"
    )
CELERY_TASK_ROUTES = task_routes(PUMPTRACK_CELERY_QUEUE_PREFIX) if PUMPTRACK_CELERY_QUEUES else None

# ---------------------------------------------------------------------------- messages
# SMS backend: the console (default) or notifications.transports.TwilioSmsBackend.
PUMPTRACK_SMS_BACKEND = env_str("PUMPTRACK_SMS_BACKEND", "notifications.transports.ConsoleSmsBackend")
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env_str("TWILIO_FROM_NUMBER")
TWILIO_MESSAGING_SERVICE_SID = env_str("TWILIO_MESSAGING_SERVICE_SID")
# Only for tests and sandboxes: where Twilio's REST API lives (default: Twilio's own).
TWILIO_API_BASE_URL = env_str("TWILIO_API_BASE_URL")
# Domain part of the stable Message-ID of each email.
PUMPTRACK_EMAIL_DOMAIN = env_str("PUMPTRACK_EMAIL_DOMAIN", "pumptrack.invalid")
# One network call may take this long; a claim lasts much longer, so it never expires
# under a send still in flight.
PUMPTRACK_SEND_TIMEOUT_SECONDS = env_int("PUMPTRACK_SEND_TIMEOUT_SECONDS", 30, minimum=1, maximum=600)
PUMPTRACK_MESSAGE_CLAIM_SECONDS = env_int("PUMPTRACK_MESSAGE_CLAIM_SECONDS", 300, minimum=2, maximum=86400)
# (notifications/checks.py: the claim must outlast ten timeouts, or a send still running could be retried.)
# Backoff between transient failures, in seconds; after the last, the message fails permanently.
PUMPTRACK_MESSAGE_RETRY_DELAYS = tuple(
    env_int(f"PUMPTRACK_MESSAGE_RETRY_DELAY_{i}", default, minimum=1) for i, default in enumerate((60, 300, 1800, 7200), 1)
)
# How many due messages one dispatch sweep queues.
PUMPTRACK_DISPATCH_BATCH = env_int("PUMPTRACK_DISPATCH_BATCH", 2000, minimum=1)

# ---------------------------------------------------------------------------- logging
# Throttle counters and other short-lived state. Default: this process's memory (one web
# process); with several processes set CACHE_URL=redis://... so a token's rate is shared.
CACHE_URL = env_str("CACHE_URL")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# REST API (DESIGN.md "API contract"): token or session authentication, clinic-scoped
# querysets, JSON errors that name the field, page-number pagination everywhere.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.IsClinicMember"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "api.filters.StableOrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50, minimum=1, maximum=1000),
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "token": env_str("API_THROTTLE_RATE", "600/min"),
        # Password attempts at /api/v1/tokens/, per client address (failed ones included).
        "password": env_str("API_PASSWORD_THROTTLE_RATE", "10/min"),
    },
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
    "DATETIME_FORMAT": "iso-8601",
    "COERCE_DECIMAL_TO_STRING": True,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "pumptrack API",
    "DESCRIPTION": (
        "Intrathecal baclofen pump records, refill arithmetic and reminders. "
        "Authenticate with `Authorization: Token <key>`. Staff create tokens in the admin, or with their "
        "password (HTTP Basic) at `POST /api/v1/tokens/`; the key is shown once."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Documentation assets from the installed sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"WarningCodeEnum": "api.serializers.WARNING_CODES"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.add_error_responses",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Database errors quote row values (pumptrack/logfilters.py); the worker's handlers get it in celery.py.
    "filters": {"no_row_values": {"()": "pumptrack.logfilters.RedactDatabaseValues"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["no_row_values"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    # No health data in logs (README "What logs contain"), even at LOG_LEVEL=DEBUG: Django's
    # SQL log (DEBUG=true) prints every query's parameters, names and doses among them.
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# ---------------------------------------------------------------------------- clinical
# Values the sources leave open (clinical.md §10) are settings with sensible defaults.

# Marketed intrathecal baclofen strengths in mcg/mL: 50, 500, 2000 (Lioresal [S13]),
# 1000 (Gablofen [S8], generic [S9]). 3000 mcg/mL is UNCONFIRMED as marketed (§2 #31).
PUMPTRACK_MARKETED_CONCENTRATIONS_MCG_PER_ML = env_decimal_list(
    "PUMPTRACK_MARKETED_CONCENTRATIONS_MCG_PER_ML", "50,500,1000,2000"
)
# Dose above which a change needs an acknowledgement: soft warning, never a block (§10 C4, R4).
PUMPTRACK_DOSE_WARNING_MCG_PER_DAY = env_decimal("PUMPTRACK_DOSE_WARNING_MCG_PER_DAY", "1000", minimum=Decimal("1"))
# Maintenance increase limits come from secondary copies of the label (§4 #50, §10 C3).
PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_SPINAL_PCT = env_decimal(
    "PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_SPINAL_PCT", "40", minimum=Decimal("0")
)
PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_CEREBRAL_PCT = env_decimal(
    "PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_CEREBRAL_PCT", "20", minimum=Decimal("0")
)

# ---------------------------------------------------------------------------- outbound webhooks
# Standard Webhooks delivery (webhooks/; standardwebhooks.com). Every variable is in .env.example.
# One POST may take this long per network step (connect, each read).
PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS = env_int("PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS", 15, minimum=1, maximum=120)
# A worker holds a delivery this long; then the sweep may send it again (webhooks/checks.py:
# at least ten timeouts, so a request still running is never sent twice).
PUMPTRACK_WEBHOOK_CLAIM_SECONDS = env_int("PUMPTRACK_WEBHOOK_CLAIM_SECONDS", 300, minimum=2, maximum=86400)
# Seconds to wait after the 1st, 2nd, ... failed attempt; after the last the delivery fails
# for good. Default: the spec's recommended schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 10 h): eight attempts over about 27.6 hours. A retry goes at the first sweep after its time.
_webhook_delays = env_decimal_list("PUMPTRACK_WEBHOOK_RETRY_DELAYS", "5,300,1800,7200,18000,36000,36000")
if any(d != d.to_integral_value() for d in _webhook_delays):
    raise ImproperlyConfigured(f"PUMPTRACK_WEBHOOK_RETRY_DELAYS={_webhook_delays} must list whole seconds")
PUMPTRACK_WEBHOOK_RETRY_DELAYS = tuple(int(d) for d in _webhook_delays)
# After this many deliveries in a row fail for good, the endpoint is disabled and staff are told.
PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES = env_int("PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES", 5, minimum=1)
# After a secret is rotated, deliveries are signed with the old one too for this long.
PUMPTRACK_WEBHOOK_SECRET_ROTATION_GRACE_SECONDS = env_int("PUMPTRACK_WEBHOOK_SECRET_ROTATION_GRACE_SECONDS", 86400, minimum=0)
# How many deliveries one sweep queues.
PUMPTRACK_WEBHOOK_DISPATCH_BATCH = env_int("PUMPTRACK_WEBHOOK_DISPATCH_BATCH", 1000, minimum=1)
# Receivers on loopback, private or link-local addresses are refused (they could reach the
# database, Redis or a cloud metadata service); true only for receivers inside your network.
PUMPTRACK_WEBHOOK_ALLOW_PRIVATE = env_bool("PUMPTRACK_WEBHOOK_ALLOW_PRIVATE", False)
# The webhook enums under their own names in the OpenAPI schema; screenings keep "OutcomeEnum"
# (without it, two "outcome" fields would give theirs a hashed name).
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"].update(  # type: ignore[attr-defined]
    {
        "OutcomeEnum": "pumps.models.ScreeningOutcome",
        "WebhookEventTypeEnum": "webhooks.models.EventType",
        "WebhookDeliveryStatusEnum": "webhooks.models.DeliveryStatus",
        "WebhookAttemptOutcomeEnum": "webhooks.models.AttemptOutcome",
    }
)
