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


def test_missing_headers_are_added_once_and_present_ones_are_kept_whatever_their_case():
    from werkzeug.datastructures import Headers

    from imgsmaller.web_security import add_missing_headers

    headers = Headers([("x-content-type-options", "kept"), ("Content-Type", "application/json")])
    add_missing_headers(headers, [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")])
    assert headers.to_wsgi_list() == [("x-content-type-options", "kept"), ("Content-Type", "application/json"),
                                      ("Referrer-Policy", "same-origin")]


def test_an_api_answer_has_every_header_and_no_session_cookie(client, user):
    response = client.get("/api/v1/info", headers={"X-API-Key": user["key"]})
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-RateLimit-Limit"] and response.headers["X-Request-ID"]
    assert "Content-Security-Policy" not in response.headers  # JSON, not a page
    assert "Set-Cookie" not in response.headers and "Vary" not in response.headers


def test_a_page_still_gets_its_policy_and_a_session_still_round_trips(client):
    page = client.get("/login")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    with client.session_transaction() as session:
        session["probe"] = "kept"
    client.get("/login")
    with client.session_transaction() as session:
        assert session["probe"] == "kept"
