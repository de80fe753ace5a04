"""JOB_MEMORY_MB: a job's estimate, the budget's rule (first in first out; a job bigger than all of it
runs alone), the default from the machine, and a second big job waiting in the real pool while the first runs."""

import os
import secrets
import time

import pytest
from job_functions import scripted

from imgsmaller import job_store
from imgsmaller.db import connect, database_of, to_iso, transaction, utcnow
from imgsmaller.job_memory import BASE_MB, MemoryBudget, claim_within_budget, estimate_mb
from imgsmaller.setting_values import MEMORY_FALLBACK_MB, default_job_memory_mb
from imgsmaller.settings import SettingsError, load_settings

from helpers import build_app, shut_down
from images import image_bytes

BIG = (4000, 3000)  # 12 MP in the job's row; the stored input itself is small, so the tests stay fast
SMALL = (10, 10)


def row(width, height, output="jpeg", original_format="jpeg", original_bytes=0):
    return {"original_width": width, "original_height": height, "output": output,
            "original_format": original_format, "original_bytes": original_bytes}


def test_the_estimate_grows_with_the_pixels_and_depends_on_the_output_format():
    assert estimate_mb(row(4000, 3000)) < estimate_mb(row(8000, 6000))
    assert estimate_mb(row(4000, 3000, "jpeg")) < estimate_mb(row(4000, 3000, "avif"))
    assert estimate_mb(row(4000, 3000, "jpg")) == estimate_mb(row(4000, 3000, "jpeg"))
    assert estimate_mb(row(4000, 3000, "original", "avif")) == estimate_mb(row(4000, 3000, "avif", "jpeg"))
    assert estimate_mb(row(4000, 3000, original_bytes=10 << 20)) > estimate_mb(row(4000, 3000))


def test_a_job_whose_size_is_unknown_is_estimated_at_the_base():
    assert estimate_mb(row(None, None)) == BASE_MB


def test_jobs_fit_while_the_budget_has_room_and_the_first_one_waiting_is_named():
    budget = MemoryBudget(100)
    assert budget.try_hold(1, 60)
    assert not budget.try_hold(2, 60) and budget.waiting_for == 2
    assert budget.try_hold(3, 40) and budget.held_mb == 100
    budget.release(1)
    assert budget.try_hold(2, 60) and budget.waiting_for is None
    assert budget.held_by(2) == 60
    assert budget.try_hold(2, 60) is None  # held already: another slot is claiming it


def test_a_job_bigger_than_the_whole_budget_runs_alone():
    budget = MemoryBudget(10)
    assert budget.try_hold(1, 500)
    assert not budget.try_hold(2, 1)
    budget.release(1)
    assert budget.try_hold(2, 1)


def test_the_default_budget_is_half_the_machines_or_the_containers_memory(tmp_path):
    meminfo, cgroup, none = tmp_path / "meminfo", tmp_path / "memory.max", str(tmp_path / "none")
    meminfo.write_text("MemTotal:        2048000 kB\nMemFree:          100000 kB\n")
    assert default_job_memory_mb(str(meminfo), none) == 1000
    cgroup.write_text("max\n")
    assert default_job_memory_mb(str(meminfo), str(cgroup)) == 1000
    cgroup.write_text(f"{512 << 20}\n")
    assert default_job_memory_mb(str(meminfo), str(cgroup)) == 256
    assert default_job_memory_mb(none, none) == MEMORY_FALLBACK_MB


def test_the_setting_comes_from_the_environment_and_is_checked(tmp_path):
    def budget(environ):
        return load_settings(str(tmp_path), {"SECRET_KEY": "x"}, environ)["JOB_MEMORY_MB"]

    assert budget({}) == default_job_memory_mb()
    assert budget({"IMGSMALLER_JOB_MEMORY_MB": "512"}) == 512
    with pytest.raises(SettingsError, match="JOB_MEMORY_MB"):
        budget({"IMGSMALLER_JOB_MEMORY_MB": "0"})


def insert_job(db, size, output="jpeg"):
    """A queued job as the API leaves it (the probe's width and height in the row)."""
    with transaction(db):
        return db.execute(
            "INSERT INTO jobs (progress_key, download_token, output, original_format, original_bytes,"
            " original_width, original_height, created_at, expires_at)"
            " VALUES (?, ?, ?, 'png', 100, ?, ?, ?, '2999-01-01T00:00:00Z') RETURNING id",
            (secrets.token_hex(8), secrets.token_hex(8), output, *size, to_iso(utcnow()))).fetchone()["id"]


@pytest.mark.engines
def test_the_oldest_job_is_claimed_only_when_it_fits_and_none_behind_it_overtakes_it(db):
    first, second, small = insert_job(db, BIG), insert_job(db, BIG), insert_job(db, SMALL)
    big = estimate_mb({**row(*BIG), "original_format": "png", "original_bytes": 100})
    budget = MemoryBudget(1.5 * big)
    assert claim_within_budget(db, budget, "me", 60)["id"] == first
    assert claim_within_budget(db, budget, "me", 60) is None  # the second big job does not fit ...
    assert budget.waiting_for == second
    assert job_store.job_status(db, small) == "queued"  # ... and the small one behind it waits its turn
    budget.release(first)
    assert claim_within_budget(db, budget, "me", 60)["id"] == second
    assert claim_within_budget(db, budget, "me", 60)["id"] == small  # it fits alongside
    budget.release(second)
    budget.release(small)


@pytest.mark.engines
def test_a_job_bigger_than_the_whole_budget_is_claimed_when_nothing_else_runs(db):
    huge = insert_job(db, (8000, 6000))
    budget = MemoryBudget(1)
    assert claim_within_budget(db, budget, "me", 60)["id"] == huge
    assert claim_within_budget(db, budget, "me", 60) is None


def queue_input(app, job_id, data):
    path = app.extensions["imgsmaller.jobs"].storage.input_path(job_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


def wait_for(db, job_id, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while (job := job_store.get_job(db, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} is still {job['status']}"
        time.sleep(0.05)
    return job


@pytest.mark.slow
def test_in_the_pool_a_second_big_job_waits_for_the_first_then_runs(tmp_path):
    big = estimate_mb({**row(*BIG), "original_format": "png", "original_bytes": 100})
    app = build_app(tmp_path, INLINE_JOBS=False, WORKERS=2, JOB_FUNCTION=scripted, JOB_MEMORY_MB=1.5 * big)
    db = connect(database_of(app.config))
    release = tmp_path / "release"
    try:
        first, second, small = insert_job(db, BIG), insert_job(db, BIG), insert_job(db, SMALL)
        queue_input(app, first, b"HOLD:" + str(release).encode() + b"\n" + image_bytes())
        queue_input(app, second, image_bytes())
        queue_input(app, small, image_bytes())
        runner = app.extensions["imgsmaller.jobs"]
        runner.start()
        wait_for(db, first, ("running",))
        deadline = time.monotonic() + 60
        while runner.memory.waiting_for != second:  # the idle slot has looked at the second job and waits
            assert time.monotonic() < deadline, "no slot waited for memory"
            time.sleep(0.05)
        assert [job_store.job_status(db, j) for j in (first, second, small)] == ["running", "queued", "queued"]
        release.write_text("go")
        done = [wait_for(db, j, ("done", "failed")) for j in (first, second, small)]
        assert [job["status"] for job in done] == ["done"] * 3
        assert done[1]["started_at"] >= done[0]["finished_at"]  # it ran after the first, not beside it
        assert runner.memory.held_mb == 0
    finally:
        db.close()
        shut_down(app)


# Peaks measured by bench/memory.py (bench/RESULTS.md, "Memory per job, cut"): (width, height, upload format,
# output, upload bytes, peak MiB above the idle child). The estimate must never be below one of them.
MEASURED = [
    (4032, 3024, "jpeg", "jpeg", 4882329, 138), (4032, 3024, "jpeg", "webp", 4882329, 173),
    (4032, 3024, "jpeg", "png", 4882329, 202), (4032, 3024, "jpeg", "avif", 4882329, 377),
    (8064, 6048, "jpeg", "jpeg", 19608000, 510), (8064, 6048, "jpeg", "webp", 19608000, 694),
    (8064, 6048, "jpeg", "png", 19608000, 591), (8064, 6048, "jpeg", "avif", 19608000, 1369),
    (4032, 3024, "png", "webp", 23193572, 476), (4032, 3024, "png", "png", 23193572, 274),
    (4032, 3024, "png", "avif", 23193572, 405), (4032, 3024, "webp", "jpeg", 2914120, 192),
    (4032, 3024, "webp", "webp", 2914120, 192),
]


@pytest.mark.parametrize("width, height, original_format, output, original_bytes, peak", MEASURED)
def test_the_estimate_covers_every_measured_peak(width, height, original_format, output, original_bytes, peak):
    assert estimate_mb(row(width, height, output, original_format, original_bytes)) >= peak
