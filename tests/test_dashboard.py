"""The web pages through Flask's test client, CSRF on: every route, form error and security rule.

A POST without the CSRF token must change nothing; the assertions look at the
status, the page and the database.
"""

import hashlib
import io
import re
import zipfile
from datetime import timedelta

import pytest

from imgsmaller import accounts
from imgsmaller.db import connect, to_iso, utcnow
from imgsmaller.domains import InvalidDomainError, normalize_allowed_domain

from helpers import build_app, shut_down, wait_for_result
from images import image_bytes

PASSWORD = "correct horse battery"
FULL_KEY = re.compile(r"isk_[0-9a-f]{64}")
PAGES = ["/", "/docs", "/login", "/signup"]
LOGGED_IN_PAGES = ["/", "/docs", "/dashboard"]


@pytest.fixture
def make_app(tmp_path):
    """make_app(**settings): an app of its own on tmp_path, for settings the shared fixture lacks."""
    apps = []

    def make(**settings):
        apps.append(build_app(tmp_path / f"app{len(apps)}", WORKERS=1, **settings))
        return apps[-1]

    yield make
    for app in apps:
        shut_down(app)


def csrf_token(client, path="/login"):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)


def sign_up(client, email="ada@example.org", password=PASSWORD):
    return client.post("/signup", data={"email": email, "password": password, "csrf_token": csrf_token(client)})


def log_in(client, email, password=PASSWORD, **extra):
    return client.post("/login", data={"email": email, "password": password, "csrf_token": csrf_token(client), **extra})


def logged_in_user(client, make_user, **options):
    user = make_user(password=PASSWORD, **options)
    assert log_in(client, user["email"]).status_code == 302
    return user


def user_row(db, email):
    return db.execute("SELECT * FROM users WHERE email = ?", (email,)).fetchone()


def count(db, table):
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def post_image(client, data=None, filename="photo.png", token=None, **fields):
    token = token if token is not None else csrf_token(client, "/")
    headers = {"X-CSRFToken": token} if token else {}
    return client.post("/app/compress", headers=headers,
                       data={"file": (io.BytesIO(data or image_bytes()), filename), **fields})


def compress_done(client, **fields):
    response = post_image(client, **fields)
    assert response.status_code == 202, response.get_json()
    return wait_for_result(client, response.get_json()["progress_key"])


# -- pages and their security headers ----------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_for_an_anonymous_visitor_with_security_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("logged_in", [False, True])
def test_no_page_has_inline_script_style_or_event_handlers(client, make_user, logged_in):
    if logged_in:
        logged_in_user(client, make_user)
    for path in LOGGED_IN_PAGES if logged_in else PAGES:
        html = client.get(path).get_data(as_text=True)
        assert all('src="/static/' in tag for tag in re.findall(r"<script[^>]*>", html)), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), path
        assert "//cdn" not in html and "https://" not in re.sub(r"<pre.*?</pre>|<code.*?</code>", "", html, flags=re.S)


@pytest.mark.parametrize("asset", ["style.css", "app.js", "compress.js", "favicon.svg"])
def test_static_assets_are_served_by_the_app(client, asset):
    response = client.get(f"/static/{asset}")
    assert response.status_code == 200 and response.data
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_json_api_gets_nosniff_too(client, user):
    response = client.get("/api/v1/info", headers={"X-API-Key": user["key"]})
    assert response.status_code == 200 and response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/dashboard"])
def test_the_dashboard_sends_anonymous_visitors_to_log_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/login?next={path}"


def test_the_compressor_asks_anonymous_visitors_to_log_in_first(client):
    html = client.get("/").get_data(as_text=True)
    assert 'data-testid="login-first"' in html and 'href="/signup"' in html
    assert 'id="dropzone"' not in html and "compress.js" not in html


def test_the_compressor_shows_the_drop_zone_and_quota_when_logged_in(client, make_user):
    logged_in_user(client, make_user, daily_limit=7)
    html = client.get("/").get_data(as_text=True)
    assert 'id="dropzone"' in html and "/static/compress.js" in html
    assert re.search(r'data-testid="quota-remaining">7<', html)
    assert 'data-max-bytes="10485760"' in html


# -- sign-up -----------------------------------------------------------------------------------


def test_sign_up_creates_the_account_logs_in_and_shows_the_key_once(client, db):
    response = sign_up(client, "Ada@Example.org")
    assert response.status_code == 302 and response.headers["Location"] == "/welcome"  # post/redirect/get
    assert not FULL_KEY.search(response.get_data(as_text=True))
    response = client.get("/welcome")
    html = response.get_data(as_text=True)
    key = FULL_KEY.search(html).group(0)
    assert response.headers["Cache-Control"] == "no-store"
    reload = client.get("/welcome")  # shown once: a reload goes to the Dashboard, and signs up nobody
    assert reload.status_code == 302 and reload.headers["Location"] == "/dashboard"
    assert count(db, "users") == 1
    user = user_row(db, "ada@example.org")
    assert user["password_hash"].startswith("scrypt:")
    assert user["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert client.get("/api/v1/info", headers={"X-API-Key": key}).status_code == 200
    dashboard = client.get("/dashboard").get_data(as_text=True)
    assert key[:12] + "…" in dashboard
    assert key not in dashboard and not FULL_KEY.search(dashboard)


@pytest.mark.parametrize("email, password, message", [
    ("not-an-email", PASSWORD, "Not a valid email address"),
    ("", PASSWORD, "Not a valid email address"),
    ("bob@example.org", "short", "at least 8 characters"),
    ("bob@example.org", "", "at least 8 characters"),
    ("taken@example.org", PASSWORD, "already exists"),
])
def test_sign_up_form_errors_create_nothing(client, db, make_user, email, password, message):
    make_user("taken@example.org")
    users = count(db, "users")
    response = sign_up(client, email, password)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert count(db, "users") == users
    assert client.get("/dashboard").status_code == 302


def test_sign_up_can_be_closed_for_a_private_install(make_app):
    app = make_app(SIGNUP_OPEN=False)
    client = app.test_client()
    assert client.get("/signup").status_code == 403
    response = sign_up(client)
    assert response.status_code == 403
    db = connect(app.config["DATABASE"])
    assert count(db, "users") == 0
    db.close()
    for path in ["/", "/login", "/docs"]:
        assert 'href="/signup"' not in client.get(path).get_data(as_text=True)


# -- log-in, log-out, sessions -------------------------------------------------------------------


def test_log_in_renews_the_session_and_goes_to_the_dashboard(client, make_user):
    user = make_user(password=PASSWORD)
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
    before = csrf_token(client)
    response = log_in(client, user["email"])
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    with client.session_transaction() as session:
        assert "planted" not in session and session["user_id"] == user["id"]
    assert csrf_token(client, "/dashboard") != before


def test_the_log_in_page_sends_a_logged_in_person_on(client, make_user):
    logged_in_user(client, make_user)
    assert client.get("/login?next=/docs").headers["Location"] == "/docs"
    assert client.get("/login").headers["Location"] == "/dashboard"


def test_log_in_is_case_insensitive_on_the_email(client, make_user):
    user = make_user("Grace@Example.org", password=PASSWORD)
    assert log_in(client, " grace@example.ORG ").status_code == 302
    assert user["email"] in client.get("/dashboard").get_data(as_text=True)


@pytest.mark.parametrize("next_url, landing", [
    ("/docs", "/docs"),
    ("/dashboard?x=1", "/dashboard?x=1"),
    ("//evil.test/", "/dashboard"),
    ("https://evil.test/", "/dashboard"),
    ("/\\evil.test", "/dashboard"),
    ("javascript:alert(1)", "/dashboard"),
])
def test_log_in_returns_only_to_a_path_on_this_site(client, make_user, next_url, landing):
    user = make_user(password=PASSWORD)
    response = log_in(client, user["email"], next=next_url)
    assert response.headers["Location"] == landing


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(client, make_user):
    user = make_user(password=PASSWORD)
    wrong = log_in(client, user["email"], "wrong password")
    unknown = log_in(client, "nobody@example.org", "wrong password")
    assert wrong.status_code == unknown.status_code == 400
    message = re.compile(r'data-testid="form-error">([^<]*)<')
    assert message.search(wrong.get_data(as_text=True)).group(1) == "Wrong email or password."
    assert message.search(unknown.get_data(as_text=True)).group(1) == "Wrong email or password."
    assert client.get("/dashboard").status_code == 302


def test_an_api_only_account_from_the_cli_cannot_log_in(client, make_user):
    user = make_user()  # no password: made with `flask create-user` for API use
    response = log_in(client, user["email"], "")
    assert response.status_code == 400 and "Wrong email or password." in response.get_data(as_text=True)


def test_log_in_is_throttled_per_email_even_for_the_right_password(make_app, make_user):
    app = make_app(LOGIN_MAX_FAILURES=3, LOGIN_LOCKOUT_S=600)
    client = app.test_client()
    db = connect(app.config["DATABASE"])
    accounts.create_user(db, "ada@example.org", password=PASSWORD)
    db.close()
    for _ in range(3):
        assert log_in(client, "ada@example.org", "guess").status_code == 400
    response = log_in(client, "ada@example.org", PASSWORD)
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 600
    assert "Too many failed log-ins" in response.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302


def test_log_in_is_throttled_per_client_address_across_emails(make_app):
    app = make_app(LOGIN_MAX_FAILURES_PER_ADDRESS=3)
    client = app.test_client()
    for number in range(3):
        assert log_in(client, f"guess{number}@example.org", "guess").status_code == 400
    assert log_in(client, "another@example.org", "guess").status_code == 429
    other_address = app.test_client()
    token = csrf_token(other_address)
    response = other_address.post("/login", data={"email": "another@example.org", "password": "x", "csrf_token": token},
                                  environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert response.status_code == 400


def test_a_successful_log_in_forgives_earlier_failures_of_that_email(make_app):
    app = make_app(LOGIN_MAX_FAILURES=3)
    client = app.test_client()
    sign_up(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})

    def attempt(password):  # always from one address: failures count per email and address
        return client.post("/login", data={"email": "ada@example.org", "password": password,
                                           "csrf_token": csrf_token(client)},
                           environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code

    assert [attempt("guess"), attempt("guess"), attempt(PASSWORD)] == [400, 400, 302]
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert [attempt("guess"), attempt("guess"), attempt("guess"), attempt(PASSWORD)] == [400, 400, 400, 429]


def test_log_out_ends_the_session(client, make_user):
    logged_in_user(client, make_user)
    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/dashboard").status_code == 302
    assert 'data-testid="login-first"' in client.get("/").get_data(as_text=True)


def test_log_out_ends_copies_of_the_session_cookie_too(app, client, make_user):
    logged_in_user(client, make_user)
    cookie = client.get_cookie("session").value
    copy = app.test_client()
    copy.set_cookie("session", cookie)
    assert copy.get("/dashboard").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert copy.get("/dashboard").status_code == 302  # the stolen copy died with the log-out


def test_log_out_is_post_only(client, make_user):
    logged_in_user(client, make_user)
    assert client.get("/logout").status_code == 405
    assert client.get("/dashboard").status_code == 200


def test_a_deleted_account_ends_its_session(client, make_user, db):
    user = logged_in_user(client, make_user)
    with db:
        db.execute("DELETE FROM users WHERE id = ?", (user["id"],))
    assert client.get("/dashboard").status_code == 302


def test_the_session_cookie_is_httponly_and_lax_and_secure_over_https(client, make_user):
    user = make_user(password=PASSWORD)
    cookie = log_in(client, user["email"]).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    https = client.application.test_client()
    token = csrf_token(https)
    response = https.post("/login", base_url="https://localhost", headers={"Referer": "https://localhost/login"},
                          data={"email": user["email"], "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_an_https_public_url_makes_the_cookie_secure_even_behind_a_plain_http_hop(make_app):
    client = make_app(PUBLIC_URL="https://img.example.com").test_client()
    assert "Secure" in client.get("/login").headers["Set-Cookie"]


# -- CSRF -----------------------------------------------------------------------------------------


def state(db, email):
    user = user_row(db, email)
    return (count(db, "users"), user["key_hash"], user["allowed_domain"], count(db, "jobs"), count(db, "usage"))


@pytest.mark.parametrize("token", [None, "forged-token"])
@pytest.mark.parametrize("path, data", [
    ("/signup", {"email": "new@example.org", "password": PASSWORD}),
    ("/login", {"email": "ada@example.org", "password": PASSWORD}),
    ("/logout", {}),
    ("/dashboard/key", {}),
    ("/dashboard/domain", {"allowed_domain": "example.com"}),
    ("/dashboard/domain", {"clear": "1"}),
])
def test_a_form_post_without_a_valid_csrf_token_changes_nothing(client, db, make_user, path, data, token):
    user = logged_in_user(client, make_user, allowed_domain="old.example.org")
    before = state(db, user["email"])
    if token:
        data = {**data, "csrf_token": token}
    response = client.post(path, data=data)
    assert response.status_code == 400
    assert response.mimetype == "text/html" and "This form has expired" in response.get_data(as_text=True)
    assert state(db, user["email"]) == before
    assert client.get("/dashboard").status_code == 200  # still logged in, as the same person
    with client.session_transaction() as session:
        assert session["user_id"] == user["id"]


@pytest.mark.parametrize("token", ["", "forged-token"])
def test_the_compressor_endpoint_needs_the_csrf_header(client, db, make_user, token):
    user = logged_in_user(client, make_user)
    before = state(db, user["email"])
    response = post_image(client, token=token) if token else client.post(
        "/app/compress", data={"file": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 400
    assert set(response.get_json()) == {"message"} and "CSRF" in response.get_json()["message"]
    assert state(db, user["email"]) == before


def test_the_key_authenticated_api_is_exempt_from_csrf(client, user):
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                           data={"file": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 202


# -- Dashboard: key, domain, usage, jobs --------------------------------------------------------


def test_rotating_the_key_shows_the_new_one_once_and_the_old_one_fails_at_once(client, db, make_user):
    user = logged_in_user(client, make_user)
    response = client.post("/dashboard/key", data={"csrf_token": csrf_token(client, "/dashboard")})
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard#key-title"
    response = client.get("/dashboard")
    assert response.headers["Cache-Control"] == "no-store"
    new_key = FULL_KEY.search(response.get_data(as_text=True)).group(0)
    assert new_key != user["key"]
    assert user_row(db, user["email"])["key_prefix"] == new_key[:12]
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).status_code == 401
    assert client.get("/api/v1/info", headers={"X-API-Key": new_key}).status_code == 200
    assert new_key not in client.get("/dashboard").get_data(as_text=True)


def test_rotating_the_key_needs_a_login(client):
    response = client.post("/dashboard/key", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


@pytest.mark.parametrize("text, stored", [
    ("example.com", "example.com"),
    ("  Images.Example.COM. ", "images.example.com"),
    ("bücher.de", "xn--bcher-kva.de"),
])
def test_the_allowed_domain_is_saved_normalised_like_the_cli(client, db, make_user, text, stored):
    user = logged_in_user(client, make_user)
    form = {"allowed_domain": text, "csrf_token": csrf_token(client, "/dashboard")}
    response = client.post("/dashboard/domain", data=form)
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    assert user_row(db, user["email"])["allowed_domain"] == stored == normalize_allowed_domain(text)
    assert f"Allowed Domain set to {stored}" in client.get("/dashboard").get_data(as_text=True)


@pytest.mark.parametrize("text", ["", "https://example.com/", "example.com:8080", "10.0.0.1", "localhost",
                                  "printer.lan", "com", "user@example.com", "exa mple.com"])
def test_an_invalid_allowed_domain_is_refused_with_the_clis_message(client, db, make_user, text):
    user = logged_in_user(client, make_user, allowed_domain="kept.example.org")
    form = {"allowed_domain": text, "csrf_token": csrf_token(client, "/dashboard")}
    response = client.post("/dashboard/domain", data=form)
    assert response.status_code == 400
    with pytest.raises(InvalidDomainError) as expected:
        normalize_allowed_domain(text)
    html = response.get_data(as_text=True)
    error = re.search(r'data-testid="domain-error">([^<]*)<', html).group(1)
    assert error == expected.value.message.replace("'", "&#39;")
    assert user_row(db, user["email"])["allowed_domain"] == "kept.example.org"


def test_the_allowed_domain_can_be_removed(client, db, make_user):
    user = logged_in_user(client, make_user, allowed_domain="example.com")
    response = client.post("/dashboard/domain", data={"clear": "1", "csrf_token": csrf_token(client, "/dashboard")})
    assert response.status_code == 302
    assert user_row(db, user["email"])["allowed_domain"] is None


def test_user_supplied_text_is_always_escaped(client, db):
    email = '"><script>alert(1)</script>@example.org'
    assert sign_up(client, email).status_code == 302
    html = client.get("/dashboard").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    response = client.post("/dashboard/domain", data={"allowed_domain": '"><img src=x onerror=alert(1)>',
                                                      "csrf_token": csrf_token(client, "/dashboard")})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "<img src=x" not in html and "&lt;img src=x" in html


def test_the_dashboard_shows_todays_usage_and_the_30_day_chart(client, db, make_user):
    user = logged_in_user(client, make_user, daily_limit=50)
    today = utcnow()
    with db:
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, ?, 12)",
                   (user["id"], today.strftime("%Y-%m-%d")))
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, ?, 30)",
                   (user["id"], (today - timedelta(days=3)).strftime("%Y-%m-%d")))
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, ?, 99)",
                   (user["id"], (today - timedelta(days=40)).strftime("%Y-%m-%d")))
    html = client.get("/dashboard").get_data(as_text=True)
    assert "<strong>12</strong> of 50 requests used today · 38 left · resets at 00:00 UTC" in html
    chart = re.search(r'<svg class="chart".*?</svg>', html, re.S).group(0)
    assert chart.count("<rect") == 30
    assert f"<title>{today:%Y-%m-%d}: 12</title>" in chart
    assert f"<title>{today - timedelta(days=3):%Y-%m-%d}: 30</title>" in chart
    assert "42 requests" in html  # the 40-day-old day is outside the chart


def test_the_dashboard_lists_recent_jobs_with_sizes_saving_status_and_download(client, db, make_user):
    logged_in_user(client, make_user)
    result = compress_done(client, output="webp", filename="holiday photo.png")
    failed = compress_done(client)
    expired = compress_done(client)
    with db:
        db.execute("UPDATE jobs SET status = 'failed', message = 'The target size cannot be reached.' WHERE id = ?",
                   (failed["image_id"],))
        db.execute("UPDATE jobs SET expires_at = ? WHERE id = ?",
                   (to_iso(utcnow() - timedelta(hours=1)), expired["image_id"]))
    html = client.get("/dashboard").get_data(as_text=True)
    rows = re.findall(r"<tr>.*?</tr>", re.search(r"<tbody>.*</tbody>", html, re.S).group(0), re.S)
    assert len(rows) == 3
    expired_row, failed_row, done_row = rows  # newest first
    assert "holiday_photo" in done_row and "PNG → WEBP" in done_row
    assert f"{result['saved_percent']}%" in done_row and "status-done" in done_row
    link = re.search(r'href="(/download/\d+\?token=[^"]+)"', done_row).group(1)
    assert client.get(link).status_code == 200
    assert "status-failed" in failed_row and "href=" not in failed_row
    assert "expired" in expired_row and "/download/" not in expired_row
    other = make_user(password=PASSWORD)
    stranger = client.application.test_client()
    log_in(stranger, other["email"])
    assert "No jobs yet" in stranger.get("/dashboard").get_data(as_text=True)


# -- the compressor's JSON endpoint and images -------------------------------------------------


def test_the_compressor_queues_a_job_on_the_persons_own_quota(client, db, make_user):
    user = logged_in_user(client, make_user, daily_limit=5)
    response = post_image(client, output="avif", target_size="2KB")
    assert response.status_code == 202
    body = response.get_json()
    assert body["queued"] is True and body["result_url"] == f"/result/{body['progress_key']}"
    assert body["remaining_today"] == 4 and response.headers["X-RateLimit-Remaining"] == "4"
    job = db.execute("SELECT * FROM jobs WHERE id = ?", (body["image_id"],)).fetchone()
    assert job["user_id"] == user["id"] and job["output"] == "avif" and job["target_size"] == 2048
    result = wait_for_result(client, body["progress_key"])
    assert result["status"] == "done" and result["format"] == "avif" and result["bytes"] <= 2048
    info = client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()
    assert info["remaining_today"] == 4


@pytest.mark.parametrize("fields, data, status", [
    ({"target_size": "tiny"}, None, 422),
    ({"target_size": "10B"}, None, 422),
    ({"output": "gif"}, None, 422),
    ({}, b"GIF89a" + b"\x00" * 64, 415),
    ({}, b"plain text, not an image", 415),
    ({}, image_bytes()[:60], 422),
])
def test_the_compressor_answers_errors_exactly_like_the_api(client, db, make_user, fields, data, status):
    user = logged_in_user(client, make_user)
    page = post_image(client, data=data, **fields)
    api = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                      data={"file": (io.BytesIO(data or image_bytes()), "photo.png"), **fields})
    assert page.status_code == api.status_code == status
    assert page.get_json() == api.get_json() and set(page.get_json()) == {"message"}
    assert count(db, "jobs") == 0 and count(db, "usage") == 0


def test_the_compressor_without_a_file_is_422(client, make_user):
    logged_in_user(client, make_user)
    response = client.post("/app/compress", headers={"X-CSRFToken": csrf_token(client, "/")}, data={"output": "png"})
    assert response.status_code == 422 and "Missing file" in response.get_json()["message"]


@pytest.mark.parametrize("size", [20 * 1024, 200 * 1024])  # over the limit, and over the body cap too
def test_the_compressor_refuses_a_too_large_file_with_413_like_the_api(make_app, size):
    app = make_app(UPLOAD_MAX_MB=0.01)
    client = app.test_client()
    sign_up(client)
    response = post_image(client, data=b"\x89PNG\r\n\x1a\n" + b"\0" * size)
    assert response.status_code == 413 and set(response.get_json()) == {"message"}
    db = connect(app.config["DATABASE"])
    assert count(db, "jobs") == 0 and count(db, "usage") == 0
    db.close()


def test_the_compressor_stops_at_the_daily_limit_with_retry_after(client, db, make_user):
    logged_in_user(client, make_user, daily_limit=1)
    assert post_image(client).status_code == 202
    response = post_image(client)
    assert response.status_code == 429
    assert "Daily limit of 1" in response.get_json()["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert count(db, "jobs") == 1


def test_the_compressor_endpoint_needs_a_login(client, db):
    response = post_image(client)  # a valid CSRF token of an anonymous session
    assert response.status_code == 401 and "Log in" in response.get_json()["message"]
    assert count(db, "jobs") == 0


def test_the_original_and_the_result_are_shown_only_to_their_owner(client, make_user):
    logged_in_user(client, make_user)
    original = image_bytes("png", 80, 60)
    result = compress_done(client, data=original, output="webp")
    image_id = result["image_id"]
    response = client.get(f"/app/images/{image_id}/original")
    assert response.status_code == 200 and response.data == original and response.mimetype == "image/png"
    assert response.headers["Content-Length"] == str(len(original))
    assert "sandbox" in response.headers["Content-Security-Policy"]
    response = client.get(f"/app/images/{image_id}/result")
    assert response.status_code == 200 and response.mimetype == "image/webp" and len(response.data) == result["bytes"]
    assert client.get(f"/app/images/{image_id}/thumbnail").status_code == 404

    stranger = client.application.test_client()
    log_in(stranger, make_user(password=PASSWORD)["email"])
    for which in ("original", "result"):
        response = stranger.get(f"/app/images/{image_id}/{which}")
        assert response.status_code == 404 and response.is_json
        assert client.application.test_client().get(f"/app/images/{image_id}/{which}").status_code == 401
    assert client.get(f"/app/images/{image_id + 1000}/original").status_code == 404


def test_an_expired_original_answers_410(client, db, make_user):
    logged_in_user(client, make_user)
    result = compress_done(client)
    with db:
        db.execute("UPDATE jobs SET expires_at = ? WHERE id = ?",
                   (to_iso(utcnow() - timedelta(seconds=1)), result["image_id"]))
    assert client.get(f"/app/images/{result['image_id']}/original").status_code == 410


def test_download_all_zips_the_persons_finished_results(client, make_user):
    logged_in_user(client, make_user)
    first = compress_done(client, filename="one.png", output="webp")
    second = compress_done(client, filename="two.png", output="png")
    response = client.get(f"/app/download-all?id={first['image_id']}&id={second['image_id']}&id=999999")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert "imgsmaller-results.zip" in response.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(response.data)) as bundle:
        assert sorted(bundle.namelist()) == [f"one-{first['image_id']}.webp", f"two-{second['image_id']}.png"]
        assert len(bundle.read(f"one-{first['image_id']}.webp")) == first["bytes"]

    stranger = client.application.test_client()
    log_in(stranger, make_user(password=PASSWORD)["email"])
    assert stranger.get(f"/app/download-all?id={first['image_id']}").status_code == 404
    assert client.get("/app/download-all").status_code == 404
    assert client.application.test_client().get(f"/app/download-all?id={first['image_id']}").status_code == 401


# -- docs ---------------------------------------------------------------------------------------


def test_the_docs_show_this_servers_url_and_a_placeholder_key_to_anonymous_visitors(client):
    html = client.get("/docs").get_data(as_text=True)
    assert 'data-testid="base-url">http://localhost<' in html
    assert "export IMGSMALLER_API_KEY=&#39;isk_…&#39;" in html
    assert 'curl -s -H &#34;X-API-Key: $IMGSMALLER_API_KEY&#34; http://localhost/api/v1/info' in html
    for path in ("/api/v1/compress", "/result/", "/download/12345"):
        assert f"http://localhost{path}" in html


def test_the_docs_carry_the_persons_key_prefix_and_allowed_domain(client, make_user):
    user = logged_in_user(client, make_user, allowed_domain="cdn.example.net")
    html = client.get("/docs").get_data(as_text=True)
    assert f'data-testid="docs-key-prefix">{user["key"][:12]}<' in html
    assert f"export IMGSMALLER_API_KEY=&#39;{user['key'][:12]}…&#39;" in html
    assert user["key"] not in html
    assert "https://cdn.example.net/images/hero.jpg" in html


def test_the_docs_use_public_url_when_it_is_set(make_app):
    client = make_app(PUBLIC_URL="https://img.example.com/").test_client()
    html = client.get("/docs").get_data(as_text=True)
    assert "https://img.example.com/api/v1/compress" in html and "http://localhost/api" not in html
