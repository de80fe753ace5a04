"""The operations surface: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus), request ids.

Imports Flask, db, flask_db, metrics, pool, request_id and service (only for its
file_url signal). No endpoint needs an API key; they are GETs, so CSRF never
applies. `/healthz` touches nothing but the process (a liveness probe that pinged
the database would turn a database hiccup into a restart storm); `/readyz` checks
what a request needs, each check a single cheap step, so a load balancer can call
it every second.
"""

import hmac
import ipaddress
import logging
import time

from flask import Blueprint, current_app, g, jsonify, request

from . import service
from .db import SCHEMA_VERSION, database_of, schema_version
from .db import Error as db_errors
from .errors import ServiceError
from .flask_db import get_db
from .metrics import Metrics
from .pool import current_runner
from .request_id import RequestIdMiddleware, install_log_records

log = logging.getLogger(__name__)
access_log = logging.getLogger("imgsmaller.access")
# Probes and scrapes that succeed are not access-logged: a load balancer calls them every second.
QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")

bp = Blueprint("ops", __name__)


def no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def get_health():
    return no_store(jsonify(status="ok"))


@bp.get("/readyz")
def get_readiness():
    checks, problems = readiness_checks(current_runner(current_app))
    if problems:
        response = jsonify(status="unavailable", checks=checks, message="Not ready: " + "; ".join(problems))
        response.status_code = 503
        response.headers["Retry-After"] = "5"  # readiness is re-checked on every call; any short wait will do
    else:
        response = jsonify(status="ok", checks=checks)
    return no_store(response)


def readiness_checks(runner):
    """({check: "ok" | "failed" | "unknown"}, [public problem]) for database, schema, storage, jobs.

    Public messages name the check and never a path or an exception text; the log has those."""
    checks, problems = {}, []
    try:
        version = schema_version(get_db())
    except db_errors:
        log.warning("Readiness: the database does not answer", exc_info=True)
        checks["database"], checks["schema"] = "failed", "unknown"
        problems.append("database: it does not answer (see the server log)")
    else:
        checks["database"] = "ok"
        checks["schema"] = "ok" if version == SCHEMA_VERSION else "failed"
        if version < SCHEMA_VERSION:
            problems.append(f"schema: the database is at version {version}, this code needs {SCHEMA_VERSION}"
                            " (run flask --app app init-db)")
        elif version > SCHEMA_VERSION:
            problems.append(f"schema: the database is at version {version}, newer than this code"
                            f" ({SCHEMA_VERSION}); upgrade this server")
    try:
        # Local folder: a real write, through the code the uploads use (a full disk, a read-only
        # mount, a folder that cannot be created). S3: the bucket answers. Storage logs the cause.
        runner.storage.check_ready()
        checks["storage"] = "ok"
    except ServiceError:
        checks["storage"] = "failed"
        problems.append("storage: it cannot be written or reached (see the server log)")
    checks["jobs"] = "ok" if runner.alive else "failed"
    if not runner.alive:
        problems.append("jobs: the job pool is not running")
    return checks, problems


@bp.get("/metrics")
def get_metrics():
    refusal = metrics_refusal(current_app.config["METRICS_TOKEN"])
    if refusal is not None:
        return refusal
    body, content_type = current_app.extensions["imgsmaller.metrics"].render(request.headers.get("Accept"))
    return no_store(current_app.response_class(body, content_type=content_type))


def metrics_refusal(token):
    """None when this request may read /metrics, else the JSON error to answer with.

    With METRICS_TOKEN set: `Authorization: Bearer <token>` from anywhere (401 otherwise).
    Without it: only a scraper on this machine talking to the server directly (403
    otherwise); a request relayed by a proxy (it carries X-Forwarded-For or Forwarded)
    is refused even when the proxy connects from loopback."""
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = jsonify(message="Missing or invalid bearer token for /metrics.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # ProxyFix (TRUSTED_PROXIES) rewrites the client address but leaves these headers in place.
    relayed = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    if is_loopback(request.remote_addr) and not relayed:
        return None
    response = jsonify(message="/metrics answers only local requests unless METRICS_TOKEN is set.")
    response.status_code = 403
    return response


def is_loopback(address):
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


# -- request hooks ---------------------------------------------------------------------


def start_timer():
    g.ops_started = time.perf_counter()


def record_request(response):
    metrics = current_app.extensions["imgsmaller.metrics"]
    req = request._get_current_object()  # one proxy look-up, not ten (issue 11)
    route = req.url_rule.rule if req.url_rule is not None else None
    seconds = time.perf_counter() - g.get("ops_started", time.perf_counter())
    status = response.status_code
    metrics.observe_request(req.method, route, status, seconds)
    log_access(req, route, status, seconds)
    # The daily limit's 429 carries the quota headers with nothing remaining; the log-in
    # throttle's carries none, and the fetch and refused-image limits' leave some remaining.
    if status == 429 and response.headers.get("X-RateLimit-Remaining") == "0":
        metrics.observe_quota_refusal(route)
    return response


def log_access(req, route, status, seconds):
    """One line per request: method, path with its query (keys redacted by logs.py), status, time."""
    if route in QUIET_ROUTES and status < 400:
        return
    query = req.query_string.decode("latin-1")
    path = req.path + (f"?{query}" if query else "")
    milliseconds = round(seconds * 1000, 1)
    method = req.method
    access_log.info("%s %s %s %.1f ms", method, path, status, milliseconds,
                    extra={"method": method, "path": path, "status": status, "duration_ms": milliseconds})


# -- wiring ----------------------------------------------------------------------------


def init_app(app):
    """The blueprint, request ids on responses and log records, and metrics fed by requests and jobs."""
    install_log_records()
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)
    metrics = Metrics(database_of(app.config))
    app.extensions["imgsmaller.metrics"] = metrics
    current_runner(app).on_job_finished = metrics.observe_job
    service.file_url_refused.connect(metrics.observe_file_url_refusal, sender=app)
    app.before_request(start_timer)
    app.after_request(record_request)
    app.register_blueprint(bp)
