"""Signed webhooks (webhooks.py): callback_url through the API, a real loopback receiver, retries, restarts.

The receiver is a real http.server on 127.0.0.1 (a free port). The webhooks go through
fetch.py's checks like file_url, so it is reached the way a public host would be: the fake
DNS (fakenet.py) names it hooks.example.com -> 127.0.0.1, the test-only NAT sends port 80
there, and FETCH_ALLOW_PRIVATE=true lets the loopback address through — in these apps
only; one test keeps the default and checks that the same address is refused.
Time is moved by setting next_attempt_at in the database, never by sleeping.
"""

import hashlib
import hmac
import http.server
import io
import json
import re
import threading
import time

import pytest

from imgsmaller import accounts, engine, webhooks
from imgsmaller.db import connect, database_of
from imgsmaller.errors import TargetUnreachableError
from imgsmaller.pool import current_runner

from helpers import (
    assert_error,
    build_app,
    free_port,
    own_connection,
    post_file,
    run_in_threads,
    shut_down,
    wait_for_result,
)
from images import image_bytes

pytestmark = [pytest.mark.engines, pytest.mark.timeout(60)]

HOOK_HOST = "hooks.example.com"
HOOK_URL = f"http://{HOOK_HOST}/imgsmaller/hook"
PASSWORD = "correct horse battery"


class Receiver:
    """A real HTTP server on loopback that records every POST and answers from a script of statuses."""

    def __init__(self):
        self.requests = []  # {"path", "headers", "body"}
        self.statuses = []  # answered in order, then 200
        self.extra_headers = {}
        self.received = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.received:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.notify_all()
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.address = self.server.server_address  # what fakenet's NAT routes to
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count, timeout=30):
        with self.received:
            assert self.received.wait_for(lambda: len(self.requests) >= count, timeout), self.requests
        return self.requests

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(dns, net):
    server = Receiver()
    dns.add(HOOK_HOST, "127.0.0.1")
    net.route("127.0.0.1", 80, server)
    yield server
    server.stop()


@pytest.fixture
def hook_app(tmp_path, database_url):
    """The app with FETCH_ALLOW_PRIVATE=true, so the loopback receiver may be reached."""
    app = build_app(tmp_path, DATABASE_URL=database_url, FETCH_ALLOW_PRIVATE=True)
    yield app
    shut_down(app)


@pytest.fixture
def hdb(hook_app):
    connection = connect(database_of(hook_app.config))
    yield connection
    connection.close()


def new_user(app, allowed_domain="example.com", **options):
    db = connect(database_of(app.config))
    try:
        email = f"u{time.monotonic_ns()}@example.org"
        user_id, key = accounts.create_user(db, email, allowed_domain=allowed_domain, **options)
    finally:
        db.close()
    return {"id": user_id, "key": key, "email": email}


def compress(client, user, **fields):
    return post_file(client, user["key"], image_bytes("png", 64, 48), "a.png", **fields)


def delivery(db, job_id):
    return dict(webhooks.get_delivery(db, job_id))


def job_id_of(client, progress_key):
    return wait_for_result(client, progress_key).get("image_id")


def make_due(db):
    """Move time forward: every pending delivery's next attempt is now."""
    db.execute("UPDATE webhook_deliveries SET next_attempt_at = '2000-01-01T00:00:00Z' WHERE status = 'pending'")


def verify(request, secret, tolerance_s=300):
    """What a receiver does (docs/api.md): parse the header, recompute, compare in constant time."""
    parts = dict(item.split("=", 1) for item in request["headers"]["ImgSmaller-Signature"].split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) <= tolerance_s


def the_job_id(db):
    return db.execute("SELECT max(id) FROM jobs").fetchone()[0]


# -- done and failed jobs ---------------------------------------------------------------


def test_a_done_job_is_posted_as_its_result_signed_with_the_accounts_secret(hook_app, hdb, receiver):
    client, user = hook_app.test_client(), new_user(hook_app)
    response = compress(client, user, callback_url=HOOK_URL)
    assert response.status_code == 202, response.get_json()
    assert "warnings" not in response.get_json()  # callback_url is a known field
    [request] = receiver.wait_for(1)
    progress_key = response.get_json()["progress_key"]
    result = client.get(f"/result/{progress_key}").get_json()
    assert json.loads(request["body"]) == {**result, "progress_key": progress_key,
                                           "result_url": f"http://localhost/result/{progress_key}"}
    assert result["status"] == "done"
    assert request["path"] == "/imgsmaller/hook"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Host"] == HOOK_HOST
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", request["headers"]["ImgSmaller-Signature"])
    assert verify(request, accounts.webhook_secret(hdb, user["id"]))
    assert not verify(request, accounts.new_webhook_secret())
    row = delivery(hdb, result["image_id"])
    assert (row["status"], row["attempts"], row["response_code"], row["error"]) == ("delivered", 1, 200, None)


def test_a_failed_job_is_posted_too_from_a_json_request(hook_app, hdb, receiver, monkeypatch):
    def unreachable(*args, **kwargs):
        raise TargetUnreachableError()

    monkeypatch.setattr(engine, "compress", unreachable)
    client, user = hook_app.test_client(), new_user(hook_app)
    import base64
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                           json={"file_base64": base64.b64encode(image_bytes()).decode(), "callback_url": HOOK_URL})
    assert response.status_code == 202, response.get_json()
    [request] = receiver.wait_for(1)
    body = json.loads(request["body"])
    assert body["status"] == "failed" and body["message"] == TargetUnreachableError.message
    assert body["progress_key"] == response.get_json()["progress_key"]
    assert verify(request, accounts.webhook_secret(hdb, user["id"]))


def test_a_request_without_callback_url_sends_nothing_and_stores_nothing(hook_app, hdb, receiver):
    client, user = hook_app.test_client(), new_user(hook_app)
    assert compress(client, user).status_code == 202
    assert receiver.requests == []
    assert hdb.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 0


# -- retries, giving up, restarts -------------------------------------------------------


def test_a_500_is_tried_again_after_the_backoff_then_delivered(hook_app, hdb, receiver):
    receiver.statuses = [500]
    client, user = hook_app.test_client(), new_user(hook_app)
    compress(client, user, callback_url=HOOK_URL)
    receiver.wait_for(1)
    job_id = the_job_id(hdb)
    row = delivery(hdb, job_id)
    assert (row["status"], row["attempts"], row["response_code"]) == ("pending", 1, 500)
    assert "HTTP 500" in row["error"]
    assert waited_about(row, webhooks.BACKOFF_S[0])
    assert webhooks.deliver_due(hdb, allow_private=True) == 0  # not due yet: nothing is sent
    make_due(hdb)
    assert webhooks.deliver_due(hdb, allow_private=True) == 1
    first, second = receiver.wait_for(2)
    assert first["body"] == second["body"]  # the same body; a new timestamp and signature
    assert verify(second, accounts.webhook_secret(hdb, user["id"]))
    row = delivery(hdb, job_id)
    assert (row["status"], row["attempts"], row["response_code"], row["error"]) == ("delivered", 2, 200, None)


def waited_about(row, backoff_s):
    """The next attempt is `backoff_s` after the last one ended (it started up to DELIVERY_TIMEOUT_S earlier)."""
    from datetime import datetime

    def parse(text):
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")

    waited = (parse(row["next_attempt_at"]) - parse(row["last_attempt_at"])).total_seconds()
    return backoff_s <= waited <= backoff_s + webhooks.DELIVERY_TIMEOUT_S + 1


def test_after_the_last_attempt_the_delivery_gives_up(hook_app, hdb, receiver):
    receiver.statuses = [503] * 10
    client, user = hook_app.test_client(), new_user(hook_app)
    compress(client, user, callback_url=HOOK_URL)
    job_id = the_job_id(hdb)
    for backoff_s in webhooks.BACKOFF_S:
        row = delivery(hdb, job_id)
        assert row["status"] == "pending" and waited_about(row, backoff_s), row
        make_due(hdb)
        webhooks.deliver_due(hdb, allow_private=True)
    row = delivery(hdb, job_id)
    assert (row["status"], row["attempts"], row["response_code"]) == ("failed", webhooks.MAX_ATTEMPTS, 503)
    assert row["finished_at"]
    make_due(hdb)
    assert webhooks.deliver_due(hdb, allow_private=True) == 0
    assert len(receiver.requests) == webhooks.MAX_ATTEMPTS


def test_a_last_attempt_whose_process_died_with_the_claim_is_given_up_not_sent_again(hook_app, hdb, receiver):
    receiver.statuses = [500]
    client, user = hook_app.test_client(), new_user(hook_app)
    compress(client, user, callback_url=HOOK_URL)
    # As if the 4th attempt had been claimed and its process had died before recording it:
    hdb.execute("UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = '2000-01-01T00:00:00Z'",
                (webhooks.MAX_ATTEMPTS,))
    assert webhooks.deliver_due(hdb, allow_private=True) == 0
    row = delivery(hdb, the_job_id(hdb))
    assert (row["status"], row["attempts"]) == ("failed", webhooks.MAX_ATTEMPTS) and row["error"]
    assert len(receiver.requests) == 1


def test_a_pending_delivery_survives_a_restart_and_the_new_process_sends_it(tmp_path, database_url, receiver):
    receiver.statuses = [500]
    first = build_app(tmp_path, DATABASE_URL=database_url, FETCH_ALLOW_PRIVATE=True)
    try:
        user = new_user(first)
        compress(first.test_client(), user, callback_url=HOOK_URL)
        receiver.wait_for(1)
    finally:
        shut_down(first)
    # The next process: same database, its real pool (and so its sender) started as `serve` does.
    second = build_app(tmp_path, DATABASE_URL=database_url, FETCH_ALLOW_PRIVATE=True, INLINE_JOBS=False, WORKERS=1)
    try:
        db = own_connection(database_of(second.config))
        try:
            make_due(db)
            current_runner(second).start()
            receiver.wait_for(2)
            deadline = time.monotonic() + 30
            while delivery(db, the_job_id(db))["status"] != "delivered" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert delivery(db, the_job_id(db))["status"] == "delivered"
            assert verify(receiver.requests[1], accounts.webhook_secret(db, user["id"]))
        finally:
            db.close()
    finally:
        shut_down(second)


def test_in_the_real_pool_the_sender_thread_posts_as_the_job_ends(tmp_path, database_url, receiver):
    app = build_app(tmp_path, DATABASE_URL=database_url, FETCH_ALLOW_PRIVATE=True, INLINE_JOBS=False, WORKERS=1)
    try:
        client, user = app.test_client(), new_user(app)
        response = compress(client, user, callback_url=HOOK_URL)
        assert response.status_code == 202
        [request] = receiver.wait_for(1)  # sent by the sender thread, not by the job's slot
        assert json.loads(request["body"])["status"] == "done"
        db = own_connection(database_of(app.config))
        try:
            assert verify(request, accounts.webhook_secret(db, user["id"]))
        finally:
            db.close()
    finally:
        shut_down(app)


def test_a_web_node_with_workers_0_sends_nothing(tmp_path):
    app = build_app(tmp_path, INLINE_JOBS=False, WORKERS=0)
    try:
        runner = current_runner(app)
        runner.start()
        assert runner.webhooks._thread is None
    finally:
        shut_down(app)


def test_a_job_whose_end_was_not_announced_is_found_by_the_sender(hook_app, hdb, receiver, monkeypatch):
    # The process died between recording the job's end and announcing it (or the reaper failed the job).
    monkeypatch.setattr(current_runner(hook_app).webhooks, "job_ended", lambda db, job_id: None)
    client, user = hook_app.test_client(), new_user(hook_app)
    compress(client, user, callback_url=HOOK_URL)
    job_id = the_job_id(hdb)
    assert delivery(hdb, job_id)["status"] == "waiting" and receiver.requests == []
    assert webhooks.deliver_due(hdb, allow_private=True) == 0  # looked at again only after CHECK_S
    hdb.execute("UPDATE webhook_deliveries SET next_attempt_at = '2000-01-01T00:00:00Z'")
    assert webhooks.deliver_due(hdb, allow_private=True) == 1
    assert json.loads(receiver.wait_for(1)[0]["body"])["status"] == "done"
    assert delivery(hdb, job_id)["status"] == "delivered"


def test_racing_senders_claim_each_delivery_once(hook_app, hdb):
    user = new_user(hook_app)
    client = hook_app.test_client()
    runner = current_runner(hook_app)
    monkey = runner.webhooks.job_ended
    runner.webhooks.job_ended = lambda db, job_id: None
    try:
        for _ in range(12):
            compress(client, user, callback_url=HOOK_URL)
    finally:
        runner.webhooks.job_ended = monkey
    hdb.execute("UPDATE webhook_deliveries SET status = 'pending', body = '{}',"
                " next_attempt_at = '2000-01-01T00:00:00Z'")
    claimed, errors = [], []

    def claim_all():
        db = own_connection(database_of(hook_app.config))
        try:
            while (row := webhooks._claim_next(db)) is not None:
                claimed.append(row["id"])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            db.close()

    run_in_threads(claim_all, 6)
    assert errors == []
    assert sorted(claimed) == sorted(row[0] for row in hdb.execute("SELECT id FROM webhook_deliveries"))


# -- what is refused --------------------------------------------------------------------


def test_a_private_address_is_refused_without_fetch_allow_private(app, db, receiver):
    client, user = app.test_client(), new_user(app)
    assert compress(client, user, callback_url=HOOK_URL).status_code == 202  # its address is checked at delivery
    row = delivery(db, the_job_id(db))
    assert (row["status"], row["attempts"], row["response_code"]) == ("pending", 1, None)
    assert "internal or reserved address" in row["error"] and "callback_url" in row["error"]
    assert receiver.requests == []


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(hook_app, hdb, receiver):
    receiver.statuses = [302]
    receiver.extra_headers = {"Location": "http://hooks.example.com/elsewhere"}
    client, user = hook_app.test_client(), new_user(hook_app)
    compress(client, user, callback_url=HOOK_URL)
    row = delivery(hdb, the_job_id(hdb))
    assert (row["status"], row["attempts"], row["response_code"]) == ("pending", 1, 302)
    assert "redirects are not followed" in row["error"]
    assert [request["path"] for request in receiver.requests] == ["/imgsmaller/hook"]


@pytest.mark.parametrize(("url", "words"), [
    ("https://evil.test/hook", "not your allowed domain"),
    ("https://example.com.evil.test/hook", "not your allowed domain"),
    ("http://127.0.0.1/hook", "not your allowed domain"),
    ("ftp://hooks.example.com/hook", "http or https"),
    ("http://hooks.example.com:8080/hook", "port 80 or 443"),
    ("http://user:pw@hooks.example.com/hook", "user name"),
    ("not a url", "callback_url"),
    ("", "non-empty string"),
])
def test_a_bad_callback_url_is_a_422_naming_it_before_any_job(app, client, db, receiver, url, words):
    user = new_user(app)
    message = assert_error(compress(client, user, callback_url=url), 422)
    assert words in message and "callback_url" in message
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"] == 100


def test_a_json_callback_url_must_be_a_string_and_is_checked_before_the_fetch(app, client, dns, net):
    user = new_user(app)
    for value in (42, ["x"], {"url": HOOK_URL}):
        message = assert_error(client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                                           json={"file_url": "http://img.example.com/a.png", "callback_url": value}),
                               422)
        assert "callback_url" in message
    assert dns.lookups == [] and net.attempts == []  # no fetch of the file_url was started


def test_an_account_without_an_allowed_domain_cannot_use_callback_url(app, client):
    user = new_user(app, allowed_domain=None)
    message = assert_error(compress(client, user, callback_url=HOOK_URL), 422)
    assert "callback_url" in message and "allowed domain" in message


# -- the Dashboard ---------------------------------------------------------------------


def csrf_token(client, path="/login"):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)


def shown_secret(page):
    return re.search(r'data-testid="webhook-secret">(whsec_[0-9a-f]{64})<', page).group(1)


def test_the_dashboard_shows_the_secret_and_rotating_it_ends_the_old_signatures(hook_app, hdb, receiver):
    client = hook_app.test_client()
    user = new_user(hook_app, password=PASSWORD)
    assert client.post("/login", data={"email": user["email"], "password": PASSWORD,
                                       "csrf_token": csrf_token(client)}).status_code == 302
    old = shown_secret(client.get("/dashboard").get_data(as_text=True))
    assert old == accounts.webhook_secret(hdb, user["id"])
    assert client.post("/dashboard/webhook-secret").status_code == 400  # no CSRF token: nothing changes
    assert accounts.webhook_secret(hdb, user["id"]) == old
    token = csrf_token(client, "/dashboard")
    assert client.post("/dashboard/webhook-secret", data={"csrf_token": token}).status_code == 302
    page = client.get("/dashboard").get_data(as_text=True)
    new = shown_secret(page)
    assert new != old and "Webhook secret rotated" in page
    compress(client, user, callback_url=HOOK_URL)
    [request] = receiver.wait_for(1)
    assert verify(request, new) and not verify(request, old)


def test_the_dashboard_lists_recent_deliveries_with_status_attempts_and_answer(hook_app, hdb, receiver):
    receiver.statuses = [500]
    client = hook_app.test_client()
    user = new_user(hook_app, password=PASSWORD)
    client.post("/login", data={"email": user["email"], "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert 'data-testid="no-deliveries"' in client.get("/dashboard").get_data(as_text=True)
    compress(client, user, callback_url=HOOK_URL)
    page = client.get("/dashboard").get_data(as_text=True)
    table = page[page.index('data-testid="deliveries"'):]
    table = table[:table.index("</table>")]
    row = delivery(hdb, the_job_id(hdb))
    assert "pending" in table and "HTTP 500" in table and HOOK_URL in table
    assert row["next_attempt_at"].replace("T", " ").rstrip("Z") in table


# -- the fetch layer's POST ----------------------------------------------------------


def test_post_json_reads_at_most_a_bounded_answer_and_returns_its_status(receiver):
    from imgsmaller import fetch

    status = fetch.post_json(HOOK_URL, b'{"a": 1}', {"X-Test": "1"}, allowed_domain="example.com",
                             timeout_s=5, allow_private=True)
    assert status == 200
    [request] = receiver.requests
    assert request["body"] == b'{"a": 1}' and request["headers"]["X-Test"] == "1"


def test_post_json_is_bounded_by_its_deadline(dns, net):
    import socket

    from imgsmaller import fetch
    from imgsmaller.errors import FetchError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers

    class Silent:
        address = listener.getsockname()

    dns.add(HOOK_HOST, "127.0.0.1")
    net.route("127.0.0.1", 80, Silent)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="callback_url"):
            fetch.post_json(HOOK_URL, b"{}", {}, allowed_domain="example.com", timeout_s=0.5, allow_private=True)
    finally:
        listener.close()
    assert time.monotonic() - started < 5


def test_a_database_from_before_webhooks_gets_their_table_and_column(tmp_path):
    from imgsmaller import db as database

    path = str(tmp_path / "old.sqlite3")
    database.init_db(path)
    fresh = connect(path)
    columns = {row[1] for row in fresh.execute("PRAGMA table_info(webhook_deliveries)")}
    fresh.executescript("DROP TABLE webhook_deliveries; ALTER TABLE users DROP COLUMN webhook_secret;"
                        f" PRAGMA user_version = {database.SCHEMA_VERSION - 1};")
    fresh.close()
    database.init_db(path)
    upgraded = connect(path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION
        assert {row[1] for row in upgraded.execute("PRAGMA table_info(webhook_deliveries)")} == columns
        assert "webhook_secret" in {row[1] for row in upgraded.execute("PRAGMA table_info(users)")}
    finally:
        upgraded.close()



def test_an_idempotent_retry_gets_no_second_delivery_and_another_callback_url_is_a_422(hook_app, hdb, receiver):
    client, user = hook_app.test_client(), new_user(hook_app)
    png = image_bytes("png", 64, 48)

    def send(callback_url):
        return client.post("/api/v1/compress", headers={"X-API-Key": user["key"], "Idempotency-Key": "retry-1"},
                           data={"file": (io.BytesIO(png), "a.png"), "callback_url": callback_url})

    first, again = send(HOOK_URL), send(HOOK_URL)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["progress_key"] == again.get_json()["progress_key"]
    assert_error(send(HOOK_URL + "?other=1"), 422)
    assert hdb.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 1
    assert len(receiver.requests) == 1
