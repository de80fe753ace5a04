"""The Prometheus metrics of one app: what is counted, with which labels, and the scrape-time gauges.

Imports prometheus_client, the stdlib, db and job_store; never Flask (ops.py feeds it
from the request hooks, the job pool calls `observe_job` from its worker threads).
Each app gets its own CollectorRegistry: tests build many apps in one process, and a
process serves one app, so the global default registry would only double-register.

Labels never carry an API key, an email, a file name or a raw path: routes are URL
rules (`/result/<progress_key>`), methods and formats come from fixed lists, and
a refusal's reason is the name of the exception class.
"""

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from . import job_store
from .db import connect

log = logging.getLogger(__name__)

# Any other method is "other": a client inventing verbs must not invent label values.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UNMATCHED_ROUTE = "<unmatched>"  # 404s and 405s have no URL rule; their paths are the client's, not labels
FORMATS = ("jpeg", "png", "webp", "avif")
# Request latency: the API answers in milliseconds, except a compress request, which
# decodes the whole upload before its 202 (about 1 s for a 50-megapixel photo).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Job time: ~0.1 s for a small PNG up to minutes for a large AVIF; the last finite
# bucket is JOB_TIMEOUT_S's default (300 s), after which a job is failed.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300)
# Encodes per job: the target search costs two to four, auto and PNG more (README, "How it works").
ENCODE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)


class Metrics:
    """The collectors of one app, in their own registry."""

    def __init__(self, database):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # memory, CPU, open files of this process
        self.requests = Counter(
            "imgsmaller_http_requests", "HTTP requests answered, by method, route (the URL rule) and status.",
            ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "imgsmaller_http_request_duration_seconds", "Time to answer a request (until its body starts).",
            ["method", "route"], buckets=REQUEST_BUCKETS, registry=registry)
        self.quota_refusals = Counter(
            "imgsmaller_quota_refusals", "Compress requests refused with 429 because the daily limit was used up.",
            ["route"], registry=registry)
        self.file_url_refusals = Counter(
            "imgsmaller_file_url_refusals", "file_url fetches refused, by reason (the error's class name).",
            ["reason"], registry=registry)
        self.jobs = Counter(
            "imgsmaller_jobs", "Jobs finished by this process, by output format, mode (auto|target) and outcome.",
            ["format", "mode", "outcome"], registry=registry)
        self.job_duration = Histogram(
            "imgsmaller_job_duration_seconds", "Time a job ran in this process, by output format, mode and outcome.",
            ["format", "mode", "outcome"], buckets=JOB_BUCKETS, registry=registry)
        self.job_encodes = Histogram(
            "imgsmaller_job_encodes", "Encodes the engine ran for one done job.",
            ["format", "mode"], buckets=ENCODE_BUCKETS, registry=registry)
        self.bytes_in = Counter(
            "imgsmaller_job_input_bytes", "Bytes of the uploaded images of done jobs, by output format.",
            ["format"], registry=registry)
        self.bytes_out = Counter(
            "imgsmaller_job_output_bytes", "Bytes of the results of done jobs, by output format.",
            ["format"], registry=registry)
        registry.register(JobTableCollector(database))
        # (method, route, status) -> (request counter, latency histogram) children: `.labels()`
        # validates and locks on every call (issue 11). The keys are the label values, as
        # bounded as the labels are; a race only looks the same children up twice.
        self._request_children = {}

    # -- recording -------------------------------------------------------------------

    def observe_request(self, method, route, status, seconds):
        method = method if method in METHODS else "other"  # before the key: a client's verbs must not grow it
        route = route or UNMATCHED_ROUTE
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)

    def observe_quota_refusal(self, route):
        self.quota_refusals.labels(route or UNMATCHED_ROUTE).inc()

    def observe_file_url_refusal(self, sender, reason):
        """A receiver of service.file_url_refused (`sender` is the app)."""
        self.file_url_refusals.labels(reason).inc()

    def observe_job(self, job, result, seconds):
        """The pool's `on_job_finished`: `result` is the engine's Result, or None when the job failed.

        Called from job threads; it must never raise into the job, so errors are logged."""
        try:
            mode = "auto" if job["target_size"] is None else "target"
            if result is None:
                self.jobs.labels(requested_format(job), mode, "failed").inc()
                self.job_duration.labels(requested_format(job), mode, "failed").observe(seconds)
                return
            fmt = result.format if result.format in FORMATS else "other"
            self.jobs.labels(fmt, mode, "done").inc()
            self.job_duration.labels(fmt, mode, "done").observe(seconds)
            self.job_encodes.labels(fmt, mode).observe(result.encodes)
            self.bytes_in.labels(fmt).inc(result.original_bytes)
            self.bytes_out.labels(fmt).inc(len(result.data))
        except Exception:
            log.exception("Could not record the metrics of job %s", job["id"])

    def render(self, accept_header):
        """(body, content type) of a scrape, in the format the scraper asked for."""
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type


def requested_format(job):
    """The format a failed job was to produce: "original" means the upload's own format."""
    fmt = job["original_format"] if job["output"] == "original" else job["output"]
    return fmt if fmt in FORMATS else "other"


class JobTableCollector:
    """Queue depth and running jobs, read from the database at scrape time.

    Every process on one database reports the same numbers (the jobs table is
    shared): aggregate them with max(), not sum()."""

    def __init__(self, database):
        self.database = database

    def describe(self):
        return []  # computed at scrape time: nothing to check at registration

    def collect(self):
        try:
            db = connect(self.database)
            try:
                counts = job_store.count_by_status(db)
            finally:
                db.close()
        except Exception:
            # A scrape must still show the process's own metrics when the database is down;
            # the missing gauges (and /readyz) say that something is wrong.
            log.warning("Could not read the job counts for /metrics", exc_info=True)
            return
        queued = GaugeMetricFamily("imgsmaller_jobs_queued", "Jobs waiting to run (database-wide).")
        queued.add_metric([], counts["queued"])
        running = GaugeMetricFamily("imgsmaller_jobs_running", "Jobs running now (database-wide).")
        running.add_metric([], counts["running"])
        yield queued
        yield running
