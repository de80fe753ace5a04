"""Security of the web pages: the headers, and the throttles' 429 (the throttles themselves: test_throttle.py)."""

from imgsmaller.db import connect
from imgsmaller.throttle import Throttle
from imgsmaller.web_security import CONTENT_SECURITY_POLICY, throttled


def test_the_app_throttles_through_the_database_so_every_process_shares_the_counts(app):
    throttle = app.extensions["imgsmaller.throttle"]
    assert isinstance(throttle, Throttle)
    first, second = connect(app.config["DATABASE"]), connect(app.config["DATABASE"])  # as two processes would
    try:
        for _ in range(app.config["LOGIN_MAX_FAILURES"]):
            assert throttle.begin_login(first, "ada@example.org", "203.0.113.5").retry_after == 0
        assert throttle.begin_login(second, "ada@example.org", "203.0.113.5").retry_after > 0
    finally:
        first.close()
        second.close()


def test_a_throttled_page_is_a_429_with_retry_after(app):
    with app.test_request_context():
        response = throttled(("<p>Too many</p>", 400), 42)
    assert response.status_code == 429 and response.headers["Retry-After"] == "42"
    assert response.get_data(as_text=True) == "<p>Too many</p>"


def test_the_content_security_policy_allows_no_inline_code_and_no_framing():
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


def test_error_responses_carry_nosniff(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.headers["X-Content-Type-Options"] == "nosniff"
