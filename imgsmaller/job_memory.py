"""The job memory budget (JOB_MEMORY_MB): a job's estimated peak, the per-process ledger, the first-in-first-out claim.

Imports the stdlib and job_store. Before a slot claims a job, the pool (pool.py) estimates
the job's peak memory from its pixel count and output format (`estimate_mb`) and holds that
much of its process's budget while the job runs. The rule, first in first out:
- the oldest queued job is the only candidate: if it does not fit in what is left of the
  budget, every slot of this process waits (a big job at the head is never starved by
  smaller ones behind it; nothing is refused, and no job is started into an OOM kill);
- a job that fits runs alongside the others; with nothing running, any job runs (alone),
  even one whose estimate exceeds the whole budget.
The budget is per process (each `flask serve` or `flask worker` has its own): several
processes on one machine should split its memory between them. It counts what jobs add
above their idle child processes (about 55 MiB each, mostly shared with the forkserver).
The estimate and the measured peak of each job are logged (job_process.py measures the peak).
"""

import logging
import threading
import time

from . import job_store

log = logging.getLogger(__name__)

MIB = 1 << 20
# Peak memory of one job per pixel of the upload, above the idle child, by output format: the
# largest of bench/memory.py's peaks over the 12 and 48 MP photos (auto and a target), rounded up
# with a margin for run-to-run spread (bench/RESULTS.md, "Memory per job, cut": JPEG 10.4, WebP 13.9,
# PNG 15.9 (oxipng's threads make its peak vary: 159-202 MiB at 12 MP), AVIF 30.9 bytes a pixel).
# AVIF is libaom's encoder (~290 MiB at 12 MP alone), WebP libwebp's (100), PNG oxipng's (89-107).
BYTES_PER_PIXEL = {"jpeg": 12, "webp": 15, "png": 18, "avif": 33}
# Uploads that may hold alpha (all but JPEG): an RGBA picture costs more as WebP (libwebp's alpha plane,
# two score references) and PNG; a 12 MP RGBA PNG peaked at 476 MiB as WebP, 274 as PNG, 405 as AVIF.
ALPHA_BYTES_PER_PIXEL = {"jpeg": 12, "webp": 40, "png": 21, "avif": 33}
# And a WebP upload: 192 MiB at 12 MP as WebP (libwebp's search under the upload's size); its decode, 188 through
# Pillow's plugin, is 86 through OpenCV's libwebp now (decode.py; as JPEG the job peaks at 115, bench/RESULTS.md).
DECODE_BYTES_PER_PIXEL = {"webp": 17}
BASE_MB = 8  # what any job costs whatever its size (codec state); plus twice the upload (its bytes, stripped copy)


def output_format(output, original_format):
    """The format a job writes: its `output`, or the upload's own for "original"."""
    if output in (None, "", "original"):
        return original_format
    return {"jpg": "jpeg"}.get(output, output)


def estimate_mb(job):
    """The expected peak memory of a job row, in MiB, from its pixels, output format and upload."""
    pixels = (job["original_width"] or 0) * (job["original_height"] or 0)
    fmt = output_format(job["output"], job["original_format"])
    per_pixel = max(BYTES_PER_PIXEL.get(fmt, max(BYTES_PER_PIXEL.values())),
                    0 if job["original_format"] == "jpeg" else ALPHA_BYTES_PER_PIXEL.get(fmt, 0),
                    DECODE_BYTES_PER_PIXEL.get(job["original_format"], 0))
    return round(BASE_MB + (pixels * per_pixel + 2 * (job["original_bytes"] or 0)) / MIB, 1)


class MemoryBudget:
    """The budget of one process: how much of it the running jobs hold. Thread-safe."""

    def __init__(self, limit_mb=None):
        self.limit_mb = float("inf") if limit_mb is None else limit_mb  # None: no limit
        self.waiting_for = None  # the job a slot waits to fit, if any (for operators and tests)
        self._held = {}  # job id -> MiB
        self._changed = threading.Condition()

    @property
    def held_mb(self):
        with self._changed:
            return sum(self._held.values())

    def try_hold(self, job_id, need_mb):
        """Hold `need_mb` for the job if it fits (always when nothing is held): True; False if it
        does not fit; None if another slot of this process holds it already (and is claiming it)."""
        with self._changed:
            if job_id in self._held:
                return None
            held = sum(self._held.values())
            if self._held and held + need_mb > self.limit_mb:
                if self.waiting_for != job_id:  # once per job, not at every look
                    log.info("Job %s waits for memory: estimated %s MiB, %s of %s MiB held by running jobs",
                             job_id, need_mb, held, self.limit_mb)
                self.waiting_for = job_id
                return False
            self._held[job_id] = need_mb
            self.waiting_for = None
            return True

    def held_by(self, job_id):
        with self._changed:
            return self._held.get(job_id)

    def release(self, job_id):
        with self._changed:
            self._held.pop(job_id, None)
            self._changed.notify_all()

    def wait(self, timeout):
        """Until a job gives its memory back (True), or `timeout` s (False)."""
        with self._changed:
            return self._changed.wait(timeout)


def claim_within_budget(db, budget, instance_id, lease_s):
    """Claim the oldest queued job if it fits in `budget`, holding its estimate until
    `budget.release(job id)`; None if the queue is empty, or, after waiting up to POLL_S for
    memory, when the oldest job does not fit (first in first out: none behind it is taken).
    The head is decided on while the claim's transaction holds it (SKIP LOCKED on PostgreSQL)."""
    while True:
        looked = {}

        def fits(head, looked=looked):
            looked["id"], looked["held"] = head["id"], budget.try_hold(head["id"], estimate_mb(head))
            return looked["held"] is True

        try:
            job = job_store.claim_next_job(db, instance_id, lease_s, fits=fits)
        except BaseException:
            if looked.get("held"):
                budget.release(looked["id"])
            raise
        if job is not None:
            return job
        if "id" not in looked:
            return None  # nothing queued
        if looked["held"] is None:  # another slot of this process holds it, still claiming: look again
            time.sleep(0.01)
        elif looked["held"] is False and not budget.wait(job_store.POLL_S):
            return None  # (meanwhile another process may have claimed it: the slot looks again)
        elif looked["held"] is True:
            budget.release(looked["id"])  # held, yet no longer queued at the update: look again


def log_job_memory(job_id, peak, budget):
    """One line per job: its estimate against the peak its child measured."""
    estimate = budget.held_by(job_id)
    log.info("Job %s memory: estimated %s MiB, peak %s MiB above idle (budget %s MiB, %s MiB held)", job_id,
             estimate, "unknown" if peak is None else peak, budget.limit_mb, budget.held_mb,
             extra={"job_id": job_id, "memory_estimate_mb": estimate, "memory_peak_mb": peak})

