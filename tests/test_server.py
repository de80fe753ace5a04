"""A real waitress server in a subprocess: accounts made with the CLI, the quota race, SIGKILL mid-job.

These are the scenarios where threads in one test process would prove nothing:
concurrent HTTP requests against separate server threads, and a process that
dies while a job runs and is started again.
"""

import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from helpers import BIN, ROOT, AppProcess, answers, free_port
from images import encode, image_bytes, photo


class Server(AppProcess):
    """waitress-serve with 16 threads on a free port."""

    def __init__(self, tmp_path, name="server", **settings):
        super().__init__(tmp_path, name, secret="server-test", **settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        return self.launch([os.path.join(BIN, "waitress-serve"), "--listen", f"127.0.0.1:{self.port}",
                            "--threads", "16", "app:app"], lambda: answers(self.url), timeout=30)

    def job_status(self, progress_key):
        db = sqlite3.connect(self.env["IMGSMALLER_DATABASE"], timeout=30)
        try:
            return db.execute("SELECT status FROM jobs WHERE progress_key = ?", (progress_key,)).fetchone()[0]
        finally:
            db.close()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path, JOB_LEASE_S=5)  # a killed server's jobs run again 5 s after its last renewal
    yield server
    server.stop()


def compress(server, key, data, **fields):
    return requests.post(server.url + "/api/v1/compress", headers={"X-API-Key": key},
                         files={"file": ("a.png", data)}, data=fields, timeout=60)


def test_the_daily_limit_is_exact_under_concurrent_http_requests(server):
    key = server.flask("create-user", "race@example.org", "--daily-limit", "4")
    server.start()
    data = image_bytes("png", 32, 32)
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: compress(server, key, data).status_code, range(12)))
    assert sorted(statuses) == [202] * 4 + [429] * 8
    info = requests.get(server.url + "/api/v1/info", headers={"X-API-Key": key}, timeout=10).json()
    assert info["remaining_today"] == 0


def test_a_job_killed_mid_run_finishes_after_restart(server):
    key = server.flask("create-user", "crash@example.org")
    server.start()
    big = encode(photo(2600, 2000, seed=3), "jpeg", quality=90)  # AVIF at this size takes seconds
    response = compress(server, key, big, output="avif")
    assert response.status_code == 202, response.text
    progress_key = response.json()["progress_key"]

    deadline = time.monotonic() + 30
    while server.job_status(progress_key) != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.02)
    server.kill()
    assert server.job_status(progress_key) == "running"  # left behind by the dead process

    server.start()
    deadline = time.monotonic() + 180
    while True:
        body = requests.get(server.url + f"/result/{progress_key}", timeout=10).json()
        if body["status"] != "processing":
            break
        assert time.monotonic() < deadline, "job never finished after restart"
        time.sleep(0.2)
    assert body["status"] == "done", body
    assert body["format"] == "avif"
    download = requests.get(body["download"], timeout=30)
    assert download.status_code == 200 and len(download.content) == body["bytes"]


def test_api_key_in_the_query_is_never_logged(server):
    key = server.flask("create-user", "log@example.org")
    server.start()
    assert requests.get(server.url + f"/api/v1/info?api_key={key}", timeout=10).status_code == 200
    assert requests.get(server.url + "/api/v1/info?api_key=isk_wrong", timeout=10).status_code == 401
    server.stop()
    assert key not in server.log.read_text()


def test_a_bad_setting_stops_start_up_with_its_name(tmp_path):
    server = Server(tmp_path, DAILY_LIMIT="many")
    result = subprocess.run([os.path.join(BIN, "flask"), "--app", "app", "init-db"], cwd=ROOT, env=server.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DAILY_LIMIT" in result.stderr and "Traceback" not in result.stderr


def test_two_processes_on_one_database_never_run_the_same_job(tmp_path):
    """Jobs queued while no server runs are offered to both servers at start; each runs once."""
    first, second = (Server(tmp_path, name, WORKERS=1, JOB_LEASE_S=5) for name in ("first", "second"))
    key = first.flask("create-user", "two@example.org")
    first.start()
    data = encode(photo(800, 600, seed=5), "jpeg", quality=90)
    keys = [compress(first, key, data, output="jpeg").json()["progress_key"] for _ in range(8)]
    first.kill()  # one worker: most jobs are still queued in the database
    first.start()
    second.start()
    try:
        deadline = time.monotonic() + 240
        while any(first.job_status(k) != "done" for k in keys):
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.2)
    finally:
        first.stop()
        second.stop()
    logs = first.log.read_text() + second.log.read_text()
    db = sqlite3.connect(first.env["IMGSMALLER_DATABASE"])
    ids = [row[0] for row in db.execute("SELECT id FROM jobs")]
    db.close()
    for job_id in ids:
        assert logs.count(f"Job {job_id} done:") == 1, f"job {job_id} finished more or less than once"


@pytest.mark.slow
def test_flask_run_with_the_reloader_registers_exactly_one_worker_process(tmp_path):
    """The reloader's watcher process loads the app too; only the process serving requests runs jobs."""
    server = Server(tmp_path)
    server.flask("init-db")
    with open(server.log, "ab") as log:
        server.process = subprocess.Popen(
            [os.path.join(BIN, "flask"), "--app", "app", "run", "--debug", "--port", str(server.port)],
            cwd=ROOT, env=server.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # The first request loads the app in the reloader's child: slow on a busy machine.
                assert requests.get(server.url + "/api/v1/info", timeout=30).status_code == 401
                break
            except (requests.ConnectionError, requests.Timeout):  # the reloader's child is still starting
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.2)
        db = sqlite3.connect(server.env["IMGSMALLER_DATABASE"], timeout=30)
        try:
            workers = db.execute("SELECT pid FROM workers").fetchall()
        finally:
            db.close()
        assert len(workers) == 1 and workers[0][0] != server.process.pid, workers
    finally:
        server.process.terminate()  # the reloader forwards nothing: end its child too
        server.process.wait(10)
        subprocess.run(["pkill", "-f", f"--port {server.port}"], check=False)
