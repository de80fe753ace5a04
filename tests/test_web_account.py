"""The web side of accounts and errors: rotate key and sign-up follow post/redirect/get, the
Dashboard's password change, and HTML error pages for browsers with the API's JSON kept byte-for-byte.
"""

import re
from datetime import timedelta

import pytest
from test_dashboard import FULL_KEY, PASSWORD, csrf_token, log_in, logged_in_user, post_image, user_row
from werkzeug.security import check_password_hash

from imgsmaller.db import to_iso, utcnow

from helpers import wait_for_result

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def change_password(client, current=PASSWORD, new="a new password 1", again=None):
    return client.post("/dashboard/password", data={
        "current_password": current, "new_password": new, "new_password_again": new if again is None else again,
        "csrf_token": csrf_token(client, "/dashboard")})


# -- post/redirect/get ------------------------------------------------------------------------------


def test_reloading_the_dashboard_after_a_rotation_neither_rotates_again_nor_shows_the_key(client, db, make_user):
    user = logged_in_user(client, make_user)
    client.post("/dashboard/key", data={"csrf_token": csrf_token(client, "/dashboard")})
    prefix = user_row(db, user["email"])["key_prefix"]
    shown = client.get("/dashboard").get_data(as_text=True)
    assert FULL_KEY.search(shown).group(0).startswith(prefix)
    reloaded = client.get("/dashboard").get_data(as_text=True)
    assert not FULL_KEY.search(reloaded) and prefix + "…" in reloaded
    assert user_row(db, user["email"])["key_prefix"] == prefix  # the reload rotated nothing


def test_rotating_asks_for_confirmation_before_the_post(client, make_user):
    logged_in_user(client, make_user)
    html = client.get("/dashboard").get_data(as_text=True)
    confirm = re.search(r'<details class="confirm[^"]*">.*?</details>', html, re.S).group(0)
    assert 'data-testid="rotate-key"' in confirm and 'action="/dashboard/key"' in confirm
    assert "stops working at once" in confirm


# -- changing the password ----------------------------------------------------------------------


def test_changing_the_password_keeps_this_session_and_ends_the_others(app, client, db, make_user):
    user = logged_in_user(client, make_user)
    other = app.test_client()
    log_in(other, user["email"])
    assert other.get("/dashboard").status_code == 200
    response = change_password(client)
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200 and "Password changed" in page.get_data(as_text=True)
    assert other.get("/dashboard").status_code == 302  # the other session is logged out
    assert check_password_hash(user_row(db, user["email"])["password_hash"], "a new password 1")
    assert log_in(app.test_client(), user["email"], "a new password 1").status_code == 302
    assert log_in(app.test_client(), user["email"], PASSWORD).status_code == 400


@pytest.mark.parametrize("fields, message", [
    ({"current": "wrong password"}, "current password is wrong"),
    ({"again": "something else"}, "differ"),
    ({"new": "short"}, "at least 8 characters"),
])
def test_a_refused_password_change_changes_nothing(client, db, make_user, fields, message):
    user = logged_in_user(client, make_user)
    before = user_row(db, user["email"])
    response = change_password(client, **fields)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    after = user_row(db, user["email"])
    assert (after["password_hash"], after["session_version"]) == (before["password_hash"], before["session_version"])
    assert client.get("/dashboard").status_code == 200


def test_wrong_current_passwords_count_as_failed_log_ins(make_app_with_limit):
    client = make_app_with_limit
    for _ in range(2):
        assert change_password(client, current="wrong password").status_code == 400
    response = change_password(client)  # even the right one now waits
    assert response.status_code == 429 and "Retry-After" in response.headers


@pytest.fixture
def make_app_with_limit(tmp_path):
    from imgsmaller import accounts, create_app
    from imgsmaller.db import connect

    app = create_app({"TESTING": True, "DATABASE": str(tmp_path / "db.sqlite3"), "STORAGE_DIR": str(tmp_path / "st"),
                      "SECRET_KEY": "test-secret", "WORKERS": 1, "CLEANUP_INTERVAL_S": 3600, "LOGIN_MAX_FAILURES": 2})
    db = connect(app.config["DATABASE"])
    accounts.create_user(db, "kim@example.org", password=PASSWORD)
    db.close()
    client = app.test_client()
    assert log_in(client, "kim@example.org").status_code == 302
    yield client
    app.extensions["imgsmaller.jobs"].shutdown()


def test_changing_the_password_needs_a_login_and_the_csrf_token(client, make_user):
    response = client.post("/dashboard/password", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    logged_in_user(client, make_user)
    response = client.post("/dashboard/password", data={"current_password": PASSWORD, "new_password": "x" * 10,
                                                         "new_password_again": "x" * 10})
    assert response.status_code == 400 and "expired" in response.get_data(as_text=True)


# -- error pages ---------------------------------------------------------------------------------


def test_a_browser_gets_an_html_404_page_in_the_sites_style(client):
    response = client.get("/no-such-page", headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 404 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'data-testid="error-page"' in html and "Page not found" in html and "/static/style.css" in html
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_an_expired_download_link_opened_in_a_browser_is_an_html_410_page(client, db, make_user):
    logged_in_user(client, make_user)
    body = post_image(client).get_json()
    result = wait_for_result(client, body["progress_key"])
    with db:
        db.execute("UPDATE jobs SET expires_at = ? WHERE id = ?",
                   (to_iso(utcnow() - timedelta(hours=1)), body["image_id"]))
    link = result["download"]
    page = client.get(link, headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 410 and page.mimetype == "text/html"
    assert "This link has expired" in page.get_data(as_text=True)
    assert "This result has expired and was deleted." in page.get_data(as_text=True)
    for accept in [None, "*/*", "application/json", "application/json, text/html;q=0.5"]:
        answer = client.get(link, headers={"Accept": accept} if accept else {})
        assert answer.status_code == 410 and answer.data == b'{"message":"This result has expired and was deleted."}\n'


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/api/v1/info", "/result/unknown-key", "/app/images/999/result"])
def test_api_paths_answer_json_even_to_a_browser(client, path):
    response = client.get(path, headers={"Accept": BROWSER_ACCEPT})
    assert response.mimetype == "application/json" and set(response.get_json()) == {"message"}


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_an_unknown_page_stays_the_contracts_json_for_api_clients(client, accept):
    response = client.get("/no-such-page", headers={"Accept": accept} if accept else {})
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.data == client.get("/api/v1/nothing").data  # the same bytes as before this change
