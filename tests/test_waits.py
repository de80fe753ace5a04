"""`wait` on POST /api/v1/compress: 200 with the result when the job ends in time, else 202; the cap on waiters."""

import base64
import io
import threading

import pytest

from imgsmaller import engine, waits
from imgsmaller.errors import TargetUnreachableError
from imgsmaller.params import MAX_WAIT_S, parse_wait

from images import image_bytes


def post_form(client, key, **fields):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(image_bytes()), "a.png"), **fields})


def post_json(client, key, **fields):
    body = {"file_base64": base64.b64encode(image_bytes()).decode(), **fields}
    return client.post("/api/v1/compress", headers={"X-API-Key": key}, json=body)


def used_today(client, key):
    info = client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()
    return info["limit"] - info["remaining_today"]


@pytest.mark.parametrize("post", [post_form, post_json])
def test_a_job_done_within_wait_is_answered_200_with_its_result(client, user, post):
    response = post(client, user["key"], wait=10 if post is post_json else "10")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    key = body.pop("progress_key")
    assert body.pop("result_url") == f"http://localhost/result/{key}"
    assert body == client.get(f"/result/{key}").get_json()
    assert body["status"] == "done" and body["format"] == "png"
    assert response.headers["X-RateLimit-Remaining"] == "99"


def test_a_job_failed_within_wait_is_answered_200_with_its_message(client, user, monkeypatch):
    def unreachable(*args, **kwargs):
        raise TargetUnreachableError()

    monkeypatch.setattr(engine, "compress", unreachable)
    response = post_form(client, user["key"], wait="5")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"status": "failed", "message": TargetUnreachableError.message,
                    "progress_key": body["progress_key"], "result_url": body["result_url"]}


def test_without_wait_the_answer_is_the_202_as_before(client, user):
    response = post_form(client, user["key"])
    assert response.status_code == 202
    assert set(response.get_json()) == {"queued", "progress_key", "result_url", "download_url_template"}


@pytest.mark.parametrize("value", ["-1", "abc", "", "nan", "inf", "1_0", "0x10", "5s", "1" * 65])
def test_a_bad_wait_in_a_form_is_a_422_naming_it_and_costs_nothing(client, user, value):
    response = post_form(client, user["key"], wait=value)
    assert response.status_code == 422
    assert response.get_json()["message"].startswith("Invalid wait:")
    assert used_today(client, user["key"]) == 0


@pytest.mark.parametrize("value", ["5", True, -1, -0.5, [], {}, 1e400])
def test_a_bad_wait_in_json_is_a_422_naming_it_and_costs_nothing(client, user, value):
    response = post_json(client, user["key"], wait=value)
    assert response.status_code == 422, value
    assert response.get_json()["message"].startswith("Invalid wait:")
    assert used_today(client, user["key"]) == 0


@pytest.mark.parametrize(("value", "text", "seconds"), [
    (None, False, None), (0, False, 0.0), (2.5, False, 2.5), (61, False, MAX_WAIT_S), (10**30, False, MAX_WAIT_S),
    ("0", True, 0.0), (" 1.5 ", True, 1.5), ("1e1", True, 10.0), ("-0", True, 0.0), (".5", True, 0.5),
    ("600", True, MAX_WAIT_S),
])
def test_wait_is_seconds_capped_at_60(value, text, seconds):
    assert parse_wait(value, text=text) == seconds


def test_with_no_waiting_slot_free_the_answer_is_202_at_once(app, client, user):
    app.extensions["imgsmaller.waits"] = waits.Waiter(0)  # MAX_WAITING_REQUESTS=0
    response = post_form(client, user["key"], wait="10")
    assert response.status_code == 202


class FakeTime:
    """A clock that moves only when the waiter sleeps, and a sleep that can be held."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []
        self.hold = None

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        if self.hold is not None:
            self.hold.wait(10)
        self.now += seconds


def queued_job(db):
    from imgsmaller.db import to_iso, utcnow
    now = to_iso(utcnow())
    return db.execute(
        "INSERT INTO jobs (progress_key, download_token, status, output, original_format, original_bytes,"
        " created_at, expires_at) VALUES ('k', 't', 'queued', 'png', 'png', 10, ?, '2999-01-01T00:00:00Z')"
        " RETURNING id", (now,)).fetchone()["id"]


def test_a_job_that_does_not_end_in_time_gives_none_after_polling_with_backoff(db):
    fake = FakeTime()
    waiter = waits.Waiter(2, sleep=fake.sleep, clock=fake.clock)
    assert waiter.wait_for_end(db, queued_job(db), 2.0) is None
    assert fake.now == pytest.approx(2.0)
    assert fake.sleeps[:5] == [0.02, 0.04, 0.08, 0.16, 0.25] and max(fake.sleeps) == waits.POLL_MAX_S


def test_waiting_requests_beyond_the_cap_are_not_held(db):
    fake = FakeTime()
    fake.hold = threading.Event()
    waiter = waits.Waiter(1, sleep=fake.sleep, clock=fake.clock)
    job_id = queued_job(db)
    first = threading.Thread(target=waiter.wait_for_end, args=(db, job_id, 1.0))
    first.start()
    try:
        while not fake.sleeps:  # the first request is now waiting, in its sleep
            threading.Event().wait(0.01)
        assert waiter.wait_for_end(db, job_id, 30.0) is None  # at once: the fake clock has not moved
        assert len(fake.sleeps) == 1
    finally:
        fake.hold.set()
        first.join(10)
    # The slot is free again once the first request stopped waiting.
    db.execute("UPDATE jobs SET status = 'done' WHERE id = ?", (job_id,))
    assert waiter.wait_for_end(db, job_id, 1.0)["status"] == "done"


@pytest.mark.pool
def test_with_the_real_pool_wait_answers_200_once_a_worker_finished(client, user):
    response = post_form(client, user["key"], wait="30", target_size="2KB", output="webp")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "done" and body["format"] == "webp" and body["bytes"] <= 2048
    assert client.get(f"/result/{body['progress_key']}").get_json()["status"] == "done"
