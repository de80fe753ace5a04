"""The log-in throttle's sliding window, on a fake clock (the pages that use it: test_dashboard.py)."""

import pytest

from imgsmaller.web_security import CONTENT_SECURITY_POLICY, LoginThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_key_is_throttled_after_max_failures_until_the_window_has_passed(clock):
    throttle = LoginThrottle(3, 600, clock=clock)
    for _ in range(2):
        throttle.record_failure("email:a")
        assert throttle.retry_after("email:a") == 0
    throttle.record_failure("email:a")
    assert throttle.retry_after("email:a") == 600
    clock.now += 300
    assert throttle.retry_after("email:a") == 300
    clock.now += 301
    assert throttle.retry_after("email:a") == 0


def test_the_window_slides_so_old_failures_stop_counting(clock):
    throttle = LoginThrottle(3, 600, clock=clock)
    throttle.record_failure("k")
    clock.now += 500
    throttle.record_failure("k")
    throttle.record_failure("k")
    assert throttle.retry_after("k") == 100  # until the first failure is 600 s old
    clock.now += 100
    assert throttle.retry_after("k") == 0
    throttle.record_failure("k")
    assert throttle.retry_after("k") == 500


def test_any_throttled_key_blocks_and_reset_forgives_one_key(clock):
    throttle = LoginThrottle(2, 60, clock=clock)
    throttle.record_failure("email:a", "address:1")
    throttle.record_failure("email:b", "address:1")
    assert throttle.retry_after("email:c", "address:1") > 0
    assert throttle.retry_after("email:a", "address:2") == 0
    throttle.reset("address:1")
    assert throttle.retry_after("email:c", "address:1") == 0


def test_memory_stays_bounded_under_a_flood_of_keys(clock, monkeypatch):
    monkeypatch.setattr(LoginThrottle, "MAX_KEYS", 100)
    throttle = LoginThrottle(3, 600, clock=clock)
    for number in range(1000):
        throttle.record_failure(f"email:{number}")
    assert len(throttle._failures) <= 100


def test_the_content_security_policy_allows_no_inline_code_and_no_framing():
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


def test_error_responses_carry_nosniff(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.headers["X-Content-Type-Options"] == "nosniff"
