"""file_url end to end: POST /api/v1/compress through the real app, with no network.

The fake DNS, the test-only NAT and the recording loopback servers come from
fakenet.py (read its docstring). Every refusal is checked three ways: the JSON
status and message, the quota left untouched, and the loopback listener that the
refused name or address pointed at having accepted no connection.
"""

import time

import pytest

from fakenet import HOST, PUBLIC_IP, PUBLIC_IP_2, redirect, respond
from helpers import assert_error, build_app, shut_down, wait_for_result
from images import image_bytes

pytestmark = pytest.mark.timeout(30)

PNG = image_bytes("png", 64, 48)


def post_url(client, user, url):
    return client.post("/api/v1/compress", headers={"X-API-Key": user["key"]}, json={"file_url": url})


def remaining(client, user):
    return client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"]


@pytest.fixture
def owner(make_user):
    return make_user(allowed_domain="example.com")


@pytest.fixture
def trap(origin, net):
    """A loopback listener that every loopback address on ports 80 and 443 leads to."""
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"):
        for port in (80, 443):
            net.route(address, port, origin)
    return origin


def test_an_allowed_public_name_is_fetched_compressed_and_downloadable(client, owner, public_origin, dns):
    public_origin.routes["/photos/cat.png"] = respond(200, PNG)
    response = post_url(client, owner, "http://img.example.com/photos/cat.png?v=2")
    assert response.status_code == 202, response.get_json()
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result["status"] == "done", result
    assert dns.lookups == [HOST]
    [request] = public_origin.requests
    assert request["target"] == "/photos/cat.png?v=2"
    assert request["headers"]["host"] == HOST
    assert remaining(client, owner) == 99


def test_a_redirect_within_the_domain_is_followed(client, owner, public_origin, dns):
    dns.add("cdn.example.com", PUBLIC_IP)
    public_origin.routes["/cat.png"] = redirect("http://cdn.example.com/files/cat.png", 301)
    public_origin.routes["/files/cat.png"] = respond(200, PNG)
    assert post_url(client, owner, "http://img.example.com/cat.png").status_code == 202


@pytest.mark.parametrize(
    "url",
    [
        # Every form is in test_fetch.py; these are the ones an outside check tries first.
        "http://127.0.0.1/a.png",
        "http://localhost/a.png",
        "http://[::1]/a.png",
        "http://0.0.0.0/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/a.png",
        "http://0x7f.1/a.png",
    ],
)
def test_literal_internal_addresses_get_403_and_no_connection(client, owner, trap, dns, net, url):
    assert "allowed domain" in assert_error(post_url(client, owner, url), 403)
    assert trap.connections == 0 and net.attempts == [] and dns.lookups == []
    assert remaining(client, owner) == 100


@pytest.mark.parametrize(
    "answer",
    ["127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.1", "10.0.0.5", "192.168.0.10",
     "169.254.169.254", "100.64.1.1", "fd00::1", "64:ff9b::7f00:1"],
)
def test_the_allowed_name_pointed_inside_gets_422_and_no_connection(client, owner, trap, dns, net, answer):
    dns.add(HOST, answer)
    message = assert_error(post_url(client, owner, f"http://{HOST}/a.png"), 422)
    assert "internal" in message
    assert trap.connections == 0 and net.attempts == []
    assert remaining(client, owner) == 100


def test_a_mixed_public_and_loopback_answer_gets_422(client, owner, trap, dns, net):
    dns.add(HOST, PUBLIC_IP, "127.0.0.1")
    net.route(PUBLIC_IP, 80, trap)
    assert "internal" in assert_error(post_url(client, owner, f"http://{HOST}/a.png"), 422)
    assert trap.connections == 0


def test_rebinding_after_the_check_changes_nothing(client, owner, public_origin, other_origin, dns, net):
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])
    dns.add(HOST, lambda: next(answers))
    net.route("127.0.0.1", 80, other_origin)
    public_origin.routes["/a.png"] = respond(200, PNG)
    assert post_url(client, owner, f"http://{HOST}/a.png").status_code == 202
    assert dns.lookups == [HOST] and other_origin.connections == 0


@pytest.mark.parametrize(
    ("location", "status"),
    [("http://127.0.0.1/a.png", 403), ("http://evil.test/a.png", 403),
     ("http://internal.example.com/a.png", 422), ("file:///etc/passwd", 422),
     ("http://img.example.com:6379/", 422)],
)
def test_a_redirect_out_is_refused(client, owner, public_origin, other_origin, dns, net, location, status):
    dns.add("internal.example.com", "127.0.0.1")
    dns.add("evil.test", PUBLIC_IP_2)
    net.route("127.0.0.1", 80, other_origin)
    net.route(PUBLIC_IP_2, 80, other_origin)
    public_origin.routes["/a.png"] = redirect(location)
    assert_error(post_url(client, owner, f"http://{HOST}/a.png"), status)
    assert other_origin.connections == 0
    assert remaining(client, owner) == 100


@pytest.mark.parametrize(
    ("url", "words"),
    [("file:///etc/passwd", "http or https"), ("gopher://img.example.com/", "http or https"),
     ("data:image/png;base64,iVBORw0KGgo=", "http or https"), ("http://img.example.com:6379/", "port"),
     ("http://evil.test\\@img.example.com/", "backslash"), ("http://a@img.example.com/", "user name")],
)
def test_bad_urls_get_422(client, owner, dns, net, url, words):
    assert words in assert_error(post_url(client, owner, url), 422)
    assert dns.lookups == [] and net.attempts == []


def test_an_unresolvable_name_gets_422(client, owner, dns, net):
    assert "resolved" in assert_error(post_url(client, owner, "http://gone.example.com/a.png"), 422)


def test_an_origin_error_status_gets_422(client, owner, public_origin):
    assert "HTTP 404" in assert_error(post_url(client, owner, f"http://{HOST}/missing.png"), 422)


def test_html_served_as_an_image_gets_415(client, owner, public_origin):
    public_origin.routes["/a.png"] = respond(200, b"<!doctype html><p>hi</p>", {"Content-Type": "image/png"})
    assert_error(post_url(client, owner, f"http://{HOST}/a.png"), 415)
    assert remaining(client, owner) == 100


def test_a_png_served_as_text_html_is_accepted(client, owner, public_origin):
    public_origin.routes["/a"] = respond(200, PNG, {"Content-Type": "text/html"})
    assert post_url(client, owner, f"http://{HOST}/a").status_code == 202


@pytest.fixture
def small_app(tmp_path):
    app = build_app(tmp_path, UPLOAD_MAX_MB=0.01, FETCH_TIMEOUT_S=1)  # about 10 KB, 1 s
    yield app
    shut_down(app)


def test_over_upload_max_mb_gets_413_by_length_or_by_stream(small_app, public_origin):
    client = small_app.test_client()
    user = {"key": _make_owner(small_app)}

    def chunked(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")

    public_origin.routes["/declared.png"] = respond(200, b"x" * 20_000)
    public_origin.routes["/chunked.png"] = chunked
    assert_error(post_url(client, user, f"http://{HOST}/declared.png"), 413)
    assert_error(post_url(client, user, f"http://{HOST}/chunked.png"), 413)


def test_fetch_timeout_s_bounds_a_dripping_server(small_app, public_origin):
    client = small_app.test_client()
    user = {"key": _make_owner(small_app)}

    def drip(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"x")
            time.sleep(0.1)

    public_origin.routes["/a.png"] = drip
    started = time.monotonic()
    assert "timed out" in assert_error(post_url(client, user, f"http://{HOST}/a.png"), 422)
    assert time.monotonic() - started < 2.5


def test_fetch_allow_private_lets_a_private_network_install_fetch_inside(tmp_path, origin, dns, net):
    app = build_app(tmp_path, FETCH_ALLOW_PRIVATE=True)
    try:
        dns.add("nas.example.com", "192.168.1.20")
        net.route("192.168.1.20", 80, origin)
        origin.routes["/a.png"] = respond(200, PNG)
        user = {"key": _make_owner(app)}
        response = post_url(app.test_client(), user, "http://nas.example.com/a.png")
        assert response.status_code == 202, response.get_json()
        assert origin.connections == 1
    finally:
        shut_down(app)


def _make_owner(app):
    from imgsmaller import accounts
    from imgsmaller.db import connect

    db = connect(app.config["DATABASE"])
    try:
        _user_id, key = accounts.create_user(db, "owner@example.org", allowed_domain="example.com")
    finally:
        db.close()
    return key


def test_with_the_real_network_stack_a_loopback_listener_is_never_reached(client, owner, origin):
    # No fake DNS or NAT here: what an outside check does. Only literal addresses and
    # localhost, so nothing is ever looked up in DNS.
    port = origin.address[1]
    for url in [f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://[::1]:{port}/",
                f"http://2130706433:{port}/", f"http://0.0.0.0:{port}/", "http://127.0.0.1/",
                "http://localhost/", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/"]:
        assert post_url(client, owner, url).status_code in (403, 422), url
    assert origin.connections == 0
    assert remaining(client, owner) == 100
