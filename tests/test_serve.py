"""The production set-up of the README, run as written: real waitress subprocesses on loopback.

Each test starts the README's own command (its `export IMGSMALLER_*` lines and its
`flask --app app serve` or `waitress-serve` line, with only the port changed) and attacks
it the way the security review did: forwarded addresses behind a proxy, an oversized
body, a crowd of idle sockets, sixty simultaneous wrong passwords, two processes.
"""

import json
import os
import pathlib
import re
import select
import shlex
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest
import requests
from waitress.adjustments import Adjustments

from imgsmaller.factory import BODY_OVERHEAD_BYTES
from imgsmaller.serve import waitress_options, waitress_serve_command

from helpers import AppProcess, free_port, port_open

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
PASSWORD = "correct horse battery"
ATTACKER, VICTIM = "203.0.113.5", "198.51.100.7"


def production_section():
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Running in production"):readme.index("## Limits and retention")]


def readme_command(program):
    """The README's production command line starting with `.venv/bin/<program>`, continuation lines joined."""
    text = production_section().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith(f".venv/bin/{program} "))
    return shlex.split(line)


def readme_environment():
    """The README's `export IMGSMALLER_...=...` lines, comments dropped."""
    pairs = re.findall(r"^export (IMGSMALLER_\w+)=(\S+)", production_section(), re.MULTILINE)
    assert pairs, "no export lines in the README's production section"
    return dict(pairs)


def with_port(argv, port):
    """The README's command with its venv path made real and 8080 replaced by `port`."""
    argv = [os.path.join(BIN, argv[0].removeprefix(".venv/bin/")), *argv[1:]]
    return [arg.replace("8080", str(port)) for arg in argv]


class Server(AppProcess):
    """The README's production command (`flask serve` or `waitress-serve`) on a free port."""

    def __init__(self, tmp_path, program="flask", name="server", **settings):
        readme = readme_environment()
        readme.pop("IMGSMALLER_PUBLIC_URL")  # links (and the cookie's Secure flag) follow the test's own http URL
        super().__init__(tmp_path, name, secret="serve-test", base_env=readme, **{"WORKERS": 1, **settings})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = with_port(readme_command(program), self.port)

    def start(self):
        return self.launch(self.argv, lambda: port_open(self.port))  # a TCP connect only: no request reaches the app


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def start(tmp_path, servers):
    def start(program="flask", name="server", **settings):
        server = Server(tmp_path, program, name, **settings)
        servers.append(server)
        return server

    return start


class Browser:
    """One person's browser behind the proxy: a session cookie, and the address nginx would forward."""

    def __init__(self, server, address):
        self.server = server
        self.session = requests.Session()
        # What the README's nginx sends: the client's own X-Forwarded-For (here a lie) plus its real address.
        self.session.headers["X-Forwarded-For"] = f"10.9.8.7, {address}"
        page = self.session.get(server.url + "/login", timeout=30).text
        self.token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)

    def log_in(self, email, password):
        return self.session.post(self.server.url + "/login", allow_redirects=False, timeout=60,
                                 data={"email": email, "password": password, "csrf_token": self.token})


# -- the README's two commands are one configuration ------------------------------------


def test_the_readme_waitress_serve_flags_are_what_serve_gives_waitress(app):
    app.config["TRUSTED_PROXIES"] = 1  # as the README exports
    documented = readme_command("waitress-serve")
    assert documented[-1] == "app:app"
    kwargs, _ = Adjustments.parse_args(documented[1:-1])
    del kwargs["help"], kwargs["call"]
    options = waitress_options(app.config)
    documented_adjustments, serve_adjustments = Adjustments(**kwargs), Adjustments(**options)
    for name in Adjustments._param_map:
        assert getattr(documented_adjustments, name) == getattr(serve_adjustments, name), name
    assert shlex.split(waitress_serve_command(options))[1:] == documented[1:]  # what --print-command prints
    assert options["max_request_body_size"] == int(10 * 1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES + 1 == 14_046_550


def test_the_readme_serve_command_passes_only_the_defaults(app):
    """So the table of values in the README is what the documented command runs with."""
    documented = readme_command("flask")
    assert documented[:4] == [".venv/bin/flask", "--app", "app", "serve"]
    flags = dict(zip(documented[4::2], documented[5::2], strict=True))
    defaults = waitress_options(app.config)
    assert flags["--host"] + ":" + flags["--port"] == defaults["listen"]
    assert int(flags["--threads"]) == defaults["threads"]
    assert int(flags["--connection-limit"]) == defaults["connection_limit"]
    assert int(flags["--channel-timeout"]) == defaults["channel_timeout"]


def test_print_command_prints_the_waitress_serve_line_for_the_current_settings(tmp_path):
    server = Server(tmp_path, UPLOAD_MAX_MB=1)
    result = subprocess.run([os.path.join(BIN, "flask"), "--app", "app", "serve", "--print-command"], cwd=ROOT,
                            env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert "--listen=127.0.0.1:8080" in argv and "--connection-limit=1000" in argv
    assert argv[0] == "waitress-serve" and argv[-1] == "app:app"
    assert f"--max-request-body-size={int(1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES + 1}" in argv
    assert "--trusted-proxy=127.0.0.1" in argv and "--trusted-proxy-count=1" in argv


@pytest.mark.parametrize("settings, args, error", [
    ({"TRUSTED_PROXIES": 1}, ["--trusted-proxy", "localhost"], "must be an IP address"),
    ({"TRUSTED_PROXIES": 0}, ["--trusted-proxy", "127.0.0.1"], "needs TRUSTED_PROXIES"),
])
def test_a_trusted_proxy_that_could_never_match_is_refused(app, settings, args, error):
    app.config.update(settings)
    result = app.test_cli_runner().invoke(args=["serve", *args, "--print-command"])
    assert result.exit_code == 2 and error in result.output


# -- finding 2: behind the proxy, the app sees each client's address ---------------------


@pytest.mark.parametrize("program", ["flask", "waitress-serve"])
def test_behind_the_proxy_one_attacker_cannot_lock_out_a_victim_at_another_address(start, program):
    server = start(program)
    server.flask("create-user", "victim@example.org", "--password", PASSWORD)
    server.start()
    attacker = Browser(server, ATTACKER)
    for _ in range(10):  # LOGIN_MAX_FAILURES: ten wrong passwords for the victim's email
        assert attacker.log_in("victim@example.org", "guess").status_code == 400
    refused = attacker.log_in("victim@example.org", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0

    victim = Browser(server, VICTIM)
    response = victim.log_in("victim@example.org", PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    server.stop()
    log = server.log.read_text()
    assert f"Log-in throttled for {ATTACKER}" in log  # the forwarded address, not the proxy's or the lie
    assert "Log-in throttled for 127.0.0.1" not in log and "10.9.8.7" not in log


def test_forwarded_proto_is_trusted_from_the_proxy_and_forwarded_host_never(start):
    server = start().start()
    key = server.flask("create-user", "proto@example.org")
    headers = {"X-API-Key": key, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test"}
    body = requests.get(server.url + "/api/v1/info", headers=headers, timeout=30).json()
    assert body["endpoint"] == f"https://127.0.0.1:{server.port}/api/v1/compress"
    # A client's own malformed hop (nginx appends the real address to it) is not the proxy's: ignored.
    response = requests.get(server.url + "/api/v1/info", headers={"X-Forwarded-For": '"abc, ' + ATTACKER}, timeout=30)
    assert response.status_code == 401 and "message" in response.json()


def test_forwarded_headers_from_any_other_peer_are_dropped(start):
    server = start(TRUSTED_PROXY_ADDRESS="127.0.0.2").start()  # the test connects from 127.0.0.1
    key = server.flask("create-user", "peer@example.org")
    headers = {"X-API-Key": key, "X-Forwarded-Proto": "https", "X-Forwarded-For": ATTACKER}
    body = requests.get(server.url + "/api/v1/info", headers=headers, timeout=30).json()
    assert body["endpoint"] == f"http://127.0.0.1:{server.port}/api/v1/compress"


def test_serve_starts_the_job_pool_before_it_listens(start):
    server = start().start()  # no request has reached the app yet
    db = sqlite3.connect(server.env["IMGSMALLER_DATABASE"], timeout=30)
    try:
        pids = [row[0] for row in db.execute("SELECT pid FROM workers")]
    finally:
        db.close()
    assert pids == [server.process.pid]


# -- finding 4: a body over the limit is refused before it is read -----------------------


def raw_request(server, head, timeout=30):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.sendall(head.encode("ascii"))
    return sock


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def content_length(data):
    match = re.search(rb"content-length: *(\d+)", data.split(b"\r\n\r\n", 1)[0], re.IGNORECASE)
    return int(match.group(1)) if match else 0


def test_a_declared_body_over_the_limit_gets_a_json_413_before_a_byte_of_it_is_sent(start):
    server = start(UPLOAD_MAX_MB=1).start()
    key = server.flask("create-user", "big@example.org")
    sock = raw_request(server, f"POST /api/v1/compress HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                               f"Content-Type: application/octet-stream\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n")
    with sock:
        head, body = read_response(sock)  # waitress at its 1 GB default waits here for 200 MB
    assert head.startswith("HTTP/1.1 413") and "application/json" in head
    assert json.loads(body) == {"message": "File too large: the limit is 1 MB."}
    with raw_request(server, f"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nX-Huge: {'h' * 300_000}\r\n\r\n") as sock:
        head, body = read_response(sock)  # waitress's other refusals speak JSON too
    assert " 431 " in head.splitlines()[0] and "message" in json.loads(body)


def test_a_chunked_body_is_cut_off_at_the_limit_not_spooled(start):
    server = start(UPLOAD_MAX_MB=1).start()
    limit = int(1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES
    sock = raw_request(server, "POST /api/v1/compress HTTP/1.1\r\nHost: x\r\nX-API-Key: isk_x\r\n"
                               "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
    sent = 0
    with sock:
        while sent < 20 * limit:  # bounded: the server must answer long before this
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        head, body = read_response(sock)
    assert head.startswith("HTTP/1.1 413"), head
    # Loopback socket buffers hold a few MB that the server never read; 20x the limit is 29 MB.
    assert sent < 8 * limit


def test_a_body_of_exactly_the_limit_still_reaches_the_app(start):
    server = start(UPLOAD_MAX_MB=1).start()
    key = server.flask("create-user", "exact@example.org")
    size = int(1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES
    response = requests.post(server.url + "/api/v1/compress", data=b"{" + b" " * (size - 1), timeout=60,
                             headers={"X-API-Key": key, "Content-Type": "application/json"})
    assert response.status_code == 422 and "message" in response.json()  # the app's own answer: not JSON


# -- finding 7: idle and dripping sockets do not silence the server ----------------------


def test_two_hundred_idle_connections_do_not_stop_the_server_answering(start):
    server = start().start()
    key = server.flask("create-user", "busy@example.org")
    idle = []
    try:
        for number in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            if number % 2:
                sock.sendall(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
            idle.append(sock)
        # At waitress's defaults (100 connections, 120 s timeout) this waits minutes in the backlog.
        response = requests.get(server.url + "/api/v1/info", headers={"X-API-Key": key}, timeout=30)
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()


# -- findings 8 and 12: throttles are atomic and shared by every process -----------------


def test_sixty_simultaneous_wrong_passwords_are_checked_only_as_often_as_the_limit(start):
    server = start().start()
    browser = Browser(server, ATTACKER)
    barrier = threading.Barrier(60)
    statuses = []

    def guess():
        barrier.wait()
        response = requests.post(server.url + "/login", allow_redirects=False, timeout=120,
                                 cookies=browser.session.cookies.get_dict(),
                                 headers={"X-Forwarded-For": ATTACKER},
                                 data={"email": "ada@example.org", "password": "guess", "csrf_token": browser.token})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=guess) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [400] * 10 + [429] * 50


def test_failed_log_ins_on_one_process_count_on_another(start):
    first = start(name="first", LOGIN_MAX_FAILURES=3).start()
    second = start(name="second", LOGIN_MAX_FAILURES=3)
    second.env["IMGSMALLER_DATABASE"] = first.env["IMGSMALLER_DATABASE"]
    second.start()
    on_first, on_second = Browser(first, ATTACKER), Browser(second, ATTACKER)
    assert on_first.log_in("ada@example.org", "guess").status_code == 400
    assert on_second.log_in("ada@example.org", "guess").status_code == 400
    assert on_first.log_in("ada@example.org", "guess").status_code == 400
    assert on_second.log_in("ada@example.org", "guess").status_code == 429
    assert on_first.log_in("ada@example.org", "guess").status_code == 429


def test_sign_up_is_throttled_per_address_and_the_owner_of_another_address_still_signs_up(start):
    server = start().start()
    harvester = Browser(server, ATTACKER)
    for number in range(5):  # SIGNUP_MAX_PER_ADDRESS_PER_HOUR
        response = harvester.session.post(server.url + "/signup", timeout=60, data={
            "email": f"someone{number}@example.org", "password": PASSWORD, "csrf_token": harvester.token})
        assert response.status_code == 200
        harvester = Browser(server, ATTACKER)  # signed up, hence logged in: a fresh browser each time
    response = harvester.session.post(server.url + "/signup", timeout=60, data={
        "email": "someone0@example.org", "password": PASSWORD, "csrf_token": harvester.token})
    assert response.status_code == 429 and "Too many sign-ups" in response.text
    assert "already exists" not in response.text  # refused before the answer that tells
    newcomer = Browser(server, VICTIM)
    response = newcomer.session.post(server.url + "/signup", timeout=60, data={
        "email": "new@example.org", "password": PASSWORD, "csrf_token": newcomer.token})
    assert response.status_code == 200


def test_a_server_started_without_the_proxy_options_is_reported_once(tmp_path, caplog):
    """What plain `waitress-serve app:app` behind nginx looks like to the app: no X-Forwarded-For, from the proxy."""
    from imgsmaller import create_app

    app = create_app({"DATABASE": str(tmp_path / "db.sqlite3"), "STORAGE_DIR": str(tmp_path / "storage"),
                      "SECRET_KEY": "x", "WORKERS": 1, "TRUSTED_PROXIES": 1})
    try:
        client = app.test_client()
        client.get("/api/v1/info", headers={"X-Forwarded-For": ATTACKER})
        assert "without X-Forwarded-For" not in caplog.text
        for _ in range(3):
            client.get("/api/v1/info")
        assert caplog.text.count("without X-Forwarded-For") == 1
    finally:
        app.extensions["imgsmaller.jobs"].shutdown()
