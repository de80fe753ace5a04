"""The job pool: WORKERS slots that claim queued jobs, run each in a child process, and finish them.

Workers get plain values (ids, paths, numbers), never Flask proxies; every statement on the
jobs table goes through job_store. Idle slots wake when this process queues a job, at each
NOTIFY of a queued job on PostgreSQL (one LISTEN connection per process), or at a short poll
(SQLite; the fallback on PostgreSQL). Each slot is a thread that owns one child process
(job_process.py): the thread claims a job (a lease on the database clock), reads the input,
hands the bytes to its child, renews the lease every JOB_LEASE_S/3 while it waits, and records
the answer. At JOB_TIMEOUT_S it SIGKILLs the child and fails the job; a child that dies under a
job (OOM, segfault) gets its job queued again, up to MAX_ATTEMPTS runs. A worker that dies
itself stops renewing: the reaper of any other worker queues its jobs again once the lease passes.
A slot claims the oldest queued job only once its estimated memory fits in what is left of this
process's JOB_MEMORY_MB (job_memory.py: first in first out, a job too big for all of it runs alone).

The pool starts explicitly: on the first request a process serves, from `serve` before it
listens, or from `flask worker`. A `flask` command that only loads the app (init-db,
create-user), Flask's reloader parent and a web node with WORKERS=0 never start one.
With INLINE_JOBS (tests) a job runs in the thread that submits it, without a child.
"""

import logging
import secrets
import threading
import time
from contextlib import closing
from dataclasses import dataclass

from flask import request

from . import engine, job_memory, job_store, maintenance, webhooks
from .db import connect, database_of, listen
from .errors import ServiceUnavailableError
from .job_process import Child, ChildDied, run_one
from .job_store import FAILED_MESSAGE, TIMEOUT_MESSAGE
from .storage import open_storage

log = logging.getLogger(__name__)

STEP_S = 0.25  # how often a slot waiting on its child checks for shutdown, the timeout and the lease
STORAGE_FAILED = ("The image could not be read or stored (storage full, not writable or unreachable)."
                  " Please try again.")
INPUT_GONE = "The uploaded image is no longer available."


@dataclass(frozen=True)
class PoolSettings:
    """What a pool is told by the settings, read once (init_app); tests build their own."""

    workers: int  # slots; 0: a web node, which runs no jobs
    max_pixels: int
    cleanup_interval_s: float
    job_timeout_s: float
    lease_s: float = job_store.DEFAULT_LEASE_S
    shutdown_grace_s: float = 30
    inline: bool = False  # tests: each job runs in the submitting thread
    allow_private: bool = False  # webhooks: the same address rule as file_url
    memory_mb: float | None = None
    compress: object = None  # a picklable function like engine.compress (tests); None: the engine

    @classmethod
    def from_config(cls, config):
        return cls(workers=config["WORKERS"], max_pixels=config["MAX_PIXELS"],
                   cleanup_interval_s=config["CLEANUP_INTERVAL_S"], job_timeout_s=config["JOB_TIMEOUT_S"],
                   lease_s=config["JOB_LEASE_S"], shutdown_grace_s=config["SHUTDOWN_GRACE_S"],
                   inline=bool(config.get("INLINE_JOBS")), allow_private=config["FETCH_ALLOW_PRIVATE"],
                   memory_mb=config["JOB_MEMORY_MB"], compress=config.get("JOB_FUNCTION"))


class JobRunner:
    """The pool of one process. `inline=True` (tests) runs each job in the submitting thread."""

    def __init__(self, database, storage, settings):
        self.database = database
        self.storage = storage
        self.workers = settings.workers  # `flask worker --threads N` sets it before the start
        self.max_pixels = settings.max_pixels
        self.job_timeout_s = settings.job_timeout_s
        self.lease_s = settings.lease_s
        self.shutdown_grace_s = settings.shutdown_grace_s
        self.inline = settings.inline
        self.compress = settings.compress
        self.memory = job_memory.MemoryBudget(settings.memory_mb)
        self.instance_id = secrets.token_hex(8)
        self.upkeep = maintenance.Upkeep(database, storage, self.instance_id, settings.cleanup_interval_s,
                                         settings.lease_s)
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # no more claims
        self._abort = threading.Event()  # running jobs go back to the queue now
        self._wake = threading.Event()  # a job was queued here or (NOTIFY) elsewhere
        self._listener = None  # PostgreSQL: the LISTEN thread (db.listen)
        self._slots = []
        self._busy = set()  # ids of the jobs the slots run now
        self._maintenance = None
        self.on_job_finished = None  # callable(job, Result or None when failed, seconds); set by ops (metrics)
        # Starts with the pool.
        self.webhooks = webhooks.Sender(database, allow_private=settings.allow_private, inline=settings.inline)

    # -- life cycle ---------------------------------------------------------

    def start(self):
        """Start the slots and the maintenance thread once (not inline, not with WORKERS=0)."""
        if self.inline or self.workers == 0:
            return
        with self._lock:
            if self._maintenance is not None:
                return
            self._maintenance = threading.Thread(target=self._maintenance_loop, name="imgsmaller-maintenance",
                                                 daemon=True)
            self._slots = [threading.Thread(target=self._slot_loop, name=f"imgsmaller-job-{n}", daemon=True)
                           for n in range(self.workers)]
            self._listener = listen(self.database, job_store.JOBS_CHANNEL, self._wake.set)
        try:
            self.maintain()
        except Exception:  # e.g. the database is locked: the maintenance loop tries again
            log.exception("Start-up maintenance failed; retrying in %ss", self.upkeep.interval_s)
        self._maintenance.start()
        for slot in self._slots:
            slot.start()
        self.webhooks.start()

    @property
    def started(self):
        return self._maintenance is not None

    @property
    def alive(self):
        """Running its maintenance thread; an inline runner or a web node (WORKERS=0) needs none."""
        return self.inline or self.workers == 0 or (self.started and self._maintenance.is_alive())

    def shutdown(self, grace_s=None, wait=True):
        """Stop claiming; let running jobs finish for up to `grace_s` (SHUTDOWN_GRACE_S), then give
        them back to the queue (their attempt not counted), end the children and unregister."""
        grace_s = self.shutdown_grace_s if grace_s is None else grace_s
        self._stopping.set()
        self._wake.set()
        with self._lock:
            slots, self._slots = self._slots, []
        if not slots:
            return
        deadline = time.monotonic() + (grace_s if wait else 0)
        if self._busy:
            log.info("Stopping: waiting up to %ss for job(s) %s", grace_s if wait else 0, sorted(self._busy))
        for slot in slots:
            slot.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        for slot in slots:
            slot.join(30)
        if self._listener is not None:
            self._listener.stop()
        self.webhooks.stop()
        self.upkeep.forget_worker()

    def submit(self, job_id):
        """Run the job soon (or now, inline). Call after the transaction that queued it committed."""
        if self.inline:
            self.run(job_id)
            return
        self.start()
        self._wake.set()  # an idle slot claims it now rather than at its next poll

    def _maintenance_loop(self):
        while not self._stopping.wait(self.upkeep.interval_s):
            try:
                self.maintain()
            except Exception:
                log.exception("Maintenance run failed; trying again in %ss", self.upkeep.interval_s)

    def maintain(self):
        self.upkeep.run()

    # -- the slots ----------------------------------------------------------

    def _slot_loop(self):
        child, db = Child(self.compress), None
        try:
            try:
                child.start()  # now, not at the first job: the forkserver's start-up takes seconds
            except Exception:
                log.exception("Could not start a job process; trying again at the first job")
            while not self._stopping.is_set():
                try:
                    db = db or connect(self.database)
                    job = job_memory.claim_within_budget(db, self.memory, self.instance_id, self.lease_s)
                    if job is None:
                        listening = self._listener is not None and self._listener.listening
                        job_store.wait_for_work(db, self._wake,
                                                job_store.FALLBACK_POLL_S if listening else job_store.POLL_S)
                        continue
                    self._busy.add(job["id"])
                    try:
                        self._process(db, job, lambda data, options, db=db, job=job:
                                      self._in_child(db, job, child, data, options))
                    finally:
                        self._busy.discard(job["id"])
                        self.memory.release(job["id"])
                except Exception:
                    log.exception("A job slot failed; trying again in 1 s")
                    if db is not None:
                        db.close()
                    db = None
                    self._stopping.wait(1)
        finally:
            child.stop()
            if db is not None:
                db.close()

    def _in_child(self, db, job, child, data, options):
        """Run one job in the slot's child: (kind, value) as job_process answers, or ("timeout" |
        "died" | "lost" | "released", detail) for what the parent decided or saw. Logs its memory."""
        started = time.monotonic()
        deadline, renew_at = started + self.job_timeout_s, started + self.lease_s / 3
        child.send(job["id"], data, options)
        del data
        while True:
            try:
                answer = child.wait(STEP_S)
            except ChildDied as died:
                return "died", died.exitcode
            if answer is not None:
                job_memory.log_job_memory(job["id"], answer[3], self.memory)
                return answer[:2]
            now = time.monotonic()
            if self._abort.is_set():
                child.kill()
                return "released", None
            if now >= deadline:
                child.kill()
                return "timeout", None
            if now >= renew_at:
                renew_at = now + self.lease_s / 3
                if not self._renew(db, job):
                    child.kill()
                    return "lost", None

    def _renew(self, db, job):
        """False only when the job is no longer ours; a database hiccup is retried at the next renewal."""
        try:
            return job_store.renew_lease(db, job, self.lease_s)
        except Exception:
            log.warning("Could not renew the lease of job %s; trying again", job["id"], exc_info=True)
            return True

    # -- one job ------------------------------------------------------------

    def run(self, job_id):
        """Claim and run one job in this thread (inline mode)."""
        with closing(connect(self.database)) as db:
            job = job_store.claim_job(db, job_id, self.instance_id, self.lease_s)
            if job is None:
                return  # someone else has it, or it is finished
            self._process(db, job, lambda data, options, job=job:
                          run_one(engine.compress, job["id"], data, options))

    def _process(self, db, job, execute):
        job_id = job["id"]
        started = time.monotonic()
        try:
            data = self.storage.read_input(job_id)
        except (FileNotFoundError, ServiceUnavailableError) as error:  # store down: the client is asked to retry
            message = INPUT_GONE if isinstance(error, FileNotFoundError) else STORAGE_FAILED
            self._finished(db, job, job_store.fail_job(db, job, message), None, started)
            return
        options = {"output": job["output"], "target_size": job["target_size"], "max_pixels": self.max_pixels,
                   "resize": engine.Resize.of(job["max_width"], job["max_height"], job["fit"]),
                   "keep_metadata": job["keep_metadata"] or "none"}
        kind, value = execute(data, options)
        del data
        if kind == "ok":
            self._record(db, job, value, started)
        elif kind in ("error", "crash", "timeout"):
            if kind == "timeout":
                log.warning("Job %s timed out after %ss; its process was killed", job_id, self.job_timeout_s)
            message = {"error": value, "crash": FAILED_MESSAGE, "timeout": TIMEOUT_MESSAGE}[kind]
            self._finished(db, job, job_store.fail_job(db, job, message), None, started)
        elif kind == "died":
            outcome = job_store.retry_or_fail_job(db, job)
            log.warning("Job %s: its process died (exit code %s); job %s", job_id, value, outcome or "no longer ours")
            if outcome == "failed":
                self._finished(db, job, True, None, started)
        elif kind == "released":
            if job_store.release_job(db, job):
                log.info("Job %s released to the queue (shutting down)", job_id)
        else:  # lost
            log.warning("Job %s lost its lease (another worker may run it); dropped here", job_id)

    def _record(self, db, job, result, started):
        job_id = job["id"]
        if not self._renew(db, job):  # taken over meanwhile: the file belongs to the new run
            log.warning("Job %s is no longer ours; its result is dropped", job_id)
            return
        try:
            self.storage.save_result(job_id, result.data)
        except ServiceUnavailableError:
            self._finished(db, job, job_store.fail_job(db, job, STORAGE_FAILED), None, started)
            return
        if job_store.finish_job(db, job, result):
            log.info("Job %s done: %s %s -> %s bytes in %s encodes", job_id, result.format,
                     result.original_bytes, len(result.data), result.encodes)
            self._finished(db, job, True, result, started)
        elif job_store.job_status(db, job_id) == "failed":
            self._delete_late_result(job_id)

    def _delete_late_result(self, job_id):
        """The job timed out meanwhile: its result must not linger (expiry removes it otherwise)."""
        try:
            self.storage.delete_result(job_id)
        except ServiceUnavailableError:
            log.warning("The late result of job %s could not be deleted; expiry will", job_id)

    def _finished(self, db, job, recorded, result, started):
        if recorded and self.on_job_finished is not None:
            self.on_job_finished(job, result, time.monotonic() - started)
        self.webhooks.job_ended(db, job["id"])  # the callback_url's POST, if any (idempotent: safe if not ours)


def init_app(app):
    config = app.config
    runner = JobRunner(database_of(config), open_storage(config), PoolSettings.from_config(config))
    app.extensions["imgsmaller.jobs"] = runner

    @app.before_request
    def start_job_runner():
        # The process that serves requests runs jobs; one that only loads the app does not.
        # Not for a liveness probe: starting the pool waits on the database (ops.py).
        if not runner.started and request.endpoint != "ops.get_health":
            runner.start()

    return runner


def current_runner(app):
    return app.extensions["imgsmaller.jobs"]
