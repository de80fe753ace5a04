"""Work before the 202 is bounded (issue 14, findings 6 and 15), through the real app.

- Concurrent file_url fetches, per account (429) and per process (503), against a real
  loopback origin that holds every request until the test lets it answer (a host
  sending nothing is the slowest host there is). Names resolve through a fake DNS to a
  public-looking address that a test-only NAT sends to the loopback origin.
- The validation memory budget: a request that finds it full waits, then gets 503.
- Images refused after decoding count per account: past the hourly limit, 429.
"""

import contextlib
import io
import socket
import threading
import time

import pytest

from imgsmaller import limits as limits_module
from imgsmaller.limits import Limits

from helpers import build_app, shut_down
from images import image_bytes

pytestmark = pytest.mark.timeout(60)

HOST = "img.example.com"
PUBLIC_IP = "93.184.215.14"
PNG = image_bytes("png", 64, 48)
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


class GatedOrigin:
    """A loopback HTTP server that answers each request with PNG only once `release` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.not_found = False  # answer 404 instead
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = self._sock.getsockname()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            with self._lock:
                self.requests += 1
            self.release.wait(30)
            status, body = ("404 Not Found", b"") if self.not_found else ("200 OK", PNG)
            head = f"HTTP/1.1 {status}\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
            try:
                conn.sendall(head.encode() + body)
            except OSError:
                pass

    def wait_for_requests(self, count):
        deadline = time.monotonic() + 20
        while self.requests < count:
            assert time.monotonic() < deadline, f"origin saw {self.requests} requests, expected {count}"
            time.sleep(0.01)

    def stop(self):
        self.release.set()
        self._stopped = True
        self._sock.close()


@pytest.fixture
def origin(monkeypatch):
    """HOST resolves to PUBLIC_IP, and connections to PUBLIC_IP:80 reach the gated origin."""
    server = GatedOrigin()

    def getaddrinfo(host, port, *args, **kwargs):
        if host == HOST:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, port))]
        return _real_getaddrinfo(host, port, *args, **kwargs)

    def connect(sock, address):
        if tuple(address[:2]) == (PUBLIC_IP, 80):
            return _real_connect(sock, server.address)
        return _real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield server
    server.stop()


@pytest.fixture
def fetch_app(tmp_path):
    app = build_app(tmp_path, FETCH_MAX_CONCURRENT=3, FETCH_MAX_CONCURRENT_PER_ACCOUNT=2)
    yield app
    shut_down(app)


def post_url(app, user):
    return app.test_client().post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                                  json={"file_url": f"http://{HOST}/cat.png"})


def post_file(client, user, data):
    return client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                       data={"file": (io.BytesIO(data), "upload")})


def in_background(function, *args):
    """Start function(*args) in a thread; the returned thread's .result holds its return value."""
    thread = threading.Thread(target=lambda: setattr(thread, "result", function(*args)), daemon=True)
    thread.start()
    return thread


def assert_refused(response, status):
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert set(body) == {"message"}
    return body["message"]


def remaining(client, user):
    return client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"]


# -- file_url fetches ---------------------------------------------------------------------


def test_fetches_beyond_the_accounts_cap_get_429_and_beyond_the_total_503(fetch_app, origin):
    make = _user_maker(fetch_app)
    alice, bob, carol = make(), make(), make()
    held = [in_background(post_url, fetch_app, alice), in_background(post_url, fetch_app, alice)]
    origin.wait_for_requests(2)

    message = assert_refused(post_url(fetch_app, alice), 429)
    assert "at once for this account" in message and "at most 2" in message
    held.append(in_background(post_url, fetch_app, bob))  # other accounts still fetch
    origin.wait_for_requests(3)
    assert "already fetching 3" in assert_refused(post_url(fetch_app, carol), 503)
    assert origin.requests == 3  # the refused ones never connected

    origin.release.set()
    for thread in held:
        thread.join(30)
        assert thread.result.status_code == 202, thread.result.get_json()
    assert post_url(fetch_app, carol).status_code == 202  # every slot was given back
    client = fetch_app.test_client()
    assert [remaining(client, user) for user in (alice, bob, carol)] == [98, 99, 99]


def test_a_failed_fetch_gives_its_slot_back(fetch_app, origin):
    alice = _user_maker(fetch_app)()
    origin.not_found = True
    origin.release.set()
    for _ in range(3):
        assert post_url(fetch_app, alice).status_code == 422
    assert fetch_app.extensions["imgsmaller.limits"].fetches_running() == 0


def _user_maker(app):
    from imgsmaller import accounts
    from imgsmaller.db import connect

    counter = iter(range(1, 1000))

    def make():
        db = connect(app.config["DATABASE"])
        try:
            user_id, key = accounts.create_user(db, f"fetcher{next(counter)}@example.org",
                                                allowed_domain="example.com")
        finally:
            db.close()
        return {"id": user_id, "key": key}

    return make


# -- the validation budget ----------------------------------------------------------------


HELD = 1024 * 1024 - 1000  # of the 1 MiB budget: no room for the 64x48 PNG's 12 KB


@pytest.fixture
def budget_app(tmp_path):
    app = build_app(tmp_path, VALIDATION_MAX_MB_IN_FLIGHT=1)
    yield app
    shut_down(app)


def test_a_full_validation_budget_waits_then_answers_503(budget_app, user, monkeypatch):
    monkeypatch.setattr(limits_module, "VALIDATION_WAIT_S", 0.2)
    client = budget_app.test_client()
    with budget_app.extensions["imgsmaller.limits"].validation_budget(HELD):  # other uploads decoding
        message = assert_refused(post_file(client, user, PNG), 503)
    assert "busy checking other images" in message
    assert remaining(client, user) == 100
    assert post_file(client, user, PNG).status_code == 202  # room again


def test_a_request_waiting_for_the_budget_goes_through_once_there_is_room(budget_app, user, monkeypatch):
    monkeypatch.setattr(limits_module, "VALIDATION_WAIT_S", 30)
    limits = budget_app.extensions["imgsmaller.limits"]
    reservation = limits.validation_budget(HELD)
    reservation.__enter__()
    waiting = in_background(post_file, budget_app.test_client(), user, PNG)
    deadline = time.monotonic() + 10
    while not waiting.is_alive() or limits.bytes_in_flight() != HELD:  # posted and parked
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert not hasattr(waiting, "result")  # still waiting for room
    reservation.__exit__(None, None, None)
    waiting.join(30)
    assert waiting.result.status_code == 202


def test_the_budget_bounds_the_bytes_in_flight_and_lets_one_big_image_through_alone():
    limits = Limits(fetch_max=1, fetch_max_per_account=1, validation_max_bytes=1000)
    peak, lock = [0], threading.Lock()

    def validate(nbytes):
        with limits.validation_budget(nbytes):
            with lock:
                peak[0] = max(peak[0], limits.bytes_in_flight())
            time.sleep(0.01)

    threads = [threading.Thread(target=validate, args=(400,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 400 <= peak[0] <= 800
    validate(5000)  # bigger than the whole budget: passes when nothing else decodes
    assert limits.bytes_in_flight() == 0


# -- refused images count per account -----------------------------------------------------


@pytest.fixture
def refusing_app(tmp_path):
    app = build_app(tmp_path, REFUSED_IMAGES_MAX_PER_HOUR=3)
    yield app
    shut_down(app)


CORRUPT_PNG = PNG[:len(PNG) // 2]  # sniffs and opens as PNG, fails while decoding


def test_an_account_sending_too_many_refused_images_gets_429(refusing_app):
    make = _user_maker(refusing_app)
    mallory, other = make(), make()
    client = refusing_app.test_client()
    assert post_file(client, mallory, b"plain text, not an image").status_code == 415  # not decoded: not counted
    for _ in range(3):
        assert post_file(client, mallory, CORRUPT_PNG).status_code == 422
    message = assert_refused(post_file(client, mallory, PNG), 429)
    assert "Too many invalid images" in message and "at most 3" in message
    assert int(message.split("try again in ")[1].split()[0]) > 3000  # the oldest refusal frees in ~1 hour
    assert remaining(client, mallory) == 100
    assert post_file(client, other, PNG).status_code == 202  # per account


def test_refused_images_are_counted_in_the_shared_throttle_table(refusing_app, db):
    mallory = _user_maker(refusing_app)()
    client = refusing_app.test_client()
    assert post_file(client, mallory, CORRUPT_PNG).status_code == 422
    assert post_file(client, mallory, PNG).status_code == 202  # a good image is not counted
    rows = db.execute("SELECT bucket FROM throttle_events").fetchall()
    assert [row[0] for row in rows] == [f"refused-images:{mallory['id']}"]


def test_a_decode_reserves_its_formats_measured_memory(budget_app, user):
    limits = budget_app.extensions["imgsmaller.limits"]
    seen = []
    real = limits.validation_budget
    limits.validation_budget = lambda nbytes: (seen.append(nbytes), real(nbytes))[1]
    client = budget_app.test_client()
    for fmt in ("png", "webp", "avif", "jpeg"):
        assert post_file(client, user, image_bytes(fmt, 64, 48)).status_code == 202
    assert seen == [64 * 48 * 4, 64 * 48 * 19, 64 * 48 * 12, 64 * 48 * 4]


def test_concurrent_uploads_that_fail_validation_never_decode_beyond_the_budget(budget_app, make_user, monkeypatch):
    monkeypatch.setattr(limits_module, "VALIDATION_WAIT_S", 30)
    limits = budget_app.extensions["imgsmaller.limits"]
    big = image_bytes("png", 400, 400)  # reserves 640,000 bytes: one fits the 1 MiB budget, two do not
    corrupt = big[:-40] + bytes(28) + big[-12:]  # the last IDAT's data and CRC broken: decodes, then 422
    peak, lock, real = [0], threading.Lock(), limits.validation_budget

    @contextlib.contextmanager
    def watched(nbytes):
        with real(nbytes):
            with lock:
                peak[0] = max(peak[0], limits.bytes_in_flight())
            yield

    limits.validation_budget = watched
    users = [make_user() for _ in range(6)]
    threads = [in_background(post_file, budget_app.test_client(), user, corrupt) for user in users]
    for thread in threads:
        thread.join(60)
    assert [thread.result.status_code for thread in threads] == [422] * 6
    assert peak[0] == 400 * 400 * 4
