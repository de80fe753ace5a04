"""Scale-out on one machine, with real processes: `flask serve` as a web node (WORKERS=0), `flask worker`
processes running the jobs, SIGTERM mid-job (released or finished, never lost, never done twice),
kill -9 of a worker mid-run (its jobs run again elsewhere once the lease passes), exact quota;
on PostgreSQL, then every connection of the app processes ended mid-run (pg_terminate_backend,
as a database restart does): the web node and the workers reconnect, no job is lost or run twice.

The multi-node test runs twice: on the SQLite file and the storage folder, and on PostgreSQL
(IMGSMALLER_TEST_DATABASE_URL, a fresh schema) with S3 (IMGSMALLER_TEST_S3_*: Swift in CI),
the shape of several hosts; that half is skipped, saying why, without those servers."""

import io
import os
import re
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from imgsmaller.db import connect, connect_unpooled

from helpers import AppProcess, free_port, fresh_schema, port_open, postgres_url
from images import encode, photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")

pytestmark = pytest.mark.slow


class Node(AppProcess):
    """One `flask --app app ARGS...` process on the shared instance under tmp_path."""

    def __init__(self, tmp_path, name, *args, backend=None, **settings):
        super().__init__(tmp_path, name, secret="workers-test", base_env=backend, **{"JOB_LEASE_S": 3, **settings})
        self.database = (backend or {}).get("IMGSMALLER_DATABASE_URL") or self.database
        self.args = args
        self.port = free_port() if args and args[0] == "serve" else None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        args = [*self.args, "--port", str(self.port)] if self.port else list(self.args)
        return self.launch([FLASK, "--app", "app", *args], self.ready)

    def ready(self):
        if self.port is None:
            return "waiting for jobs" in self.log.read_text()
        return port_open(self.port)

    def signal(self, sig):
        self.process.send_signal(sig)
        return self.process.wait(120)

    def stop(self):  # as a crash would: the tests' nodes are killed, never asked to stop
        if self.process and self.process.poll() is None:
            self.kill()

    def done_lines(self):
        return re.findall(r"Job (\d+) done:", self.log.read_text()) if self.log.exists() else []


@pytest.fixture
def nodes():
    """make(tmp_path, name, *args, **settings) -> a Node; all are killed after the test (ask for
    `backend` before `nodes`, so they are killed before their database schema is dropped)."""
    started = []

    def make(*args, **kwargs):
        node = Node(*args, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def query(node, sql, *params):
    db = connect(node.database)
    try:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]
    finally:
        db.close()


@pytest.fixture(params=["sqlite-folder", "postgresql-s3"])
def backend(request):
    """The settings of the shared database and storage of every node (none: the SQLite file and folder)."""
    if request.param == "sqlite-folder":
        yield None
        return
    endpoint, bucket = os.environ.get("IMGSMALLER_TEST_S3_ENDPOINT_URL"), os.environ.get("IMGSMALLER_TEST_S3_BUCKET")
    if not (endpoint and bucket):
        pytest.skip("no S3 server: run `eval \"$(scripts/swift-s3.sh start)\"` to set IMGSMALLER_TEST_S3_*")
    create_bucket(endpoint, bucket)
    with fresh_schema(postgres_url()) as url:
        yield {"IMGSMALLER_DATABASE_URL": f"{url}&application_name={APP_NAME}",
               "IMGSMALLER_STORAGE_URL": f"s3://{bucket}/workers-{secrets.token_hex(4)}",
               "IMGSMALLER_S3_ENDPOINT_URL": endpoint,
               "IMGSMALLER_S3_REGION": os.environ.get("IMGSMALLER_TEST_S3_REGION") or "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


APP_NAME = f"imgsmaller-workers-{secrets.token_hex(4)}"  # the app processes' connections, and only theirs


def create_bucket(endpoint, bucket):
    """The test bucket exists (test_s3_storage creates it too; this test may run alone)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}),
                                        region_name=os.environ.get("IMGSMALLER_TEST_S3_REGION") or "us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def cut_connections():
    """What a network cut or a database restart does to the app processes: PostgreSQL ends every
    connection they hold (pools, the workers' LISTEN). Returns how many it ended."""
    admin = connect_unpooled(postgres_url())
    try:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname ="
                             " current_database() AND application_name = ? AND pid <> pg_backend_pid()",
                             (APP_NAME,)).fetchone()[0]
    finally:
        admin.close()


def submit(web, key, data, **fields):
    response = requests.post(web.url + "/api/v1/compress", headers={"X-API-Key": key},
                             files={"file": ("a.jpg", data)}, data=fields, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["progress_key"]


def job_of(web, progress_key):
    return query(web, "SELECT id, status, attempts, claimed_by FROM jobs WHERE progress_key = ?", progress_key)[0]


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def done_counts(*nodes):
    counts = {}
    for node in nodes:
        for job_id in node.done_lines():
            counts[int(job_id)] = counts.get(int(job_id), 0) + 1
    return counts


SLOW = encode(photo(2600, 2000, seed=3), "jpeg", quality=90)  # AVIF at this size takes seconds


def test_sigterm_releases_a_running_job_after_the_grace_period_and_it_finishes_once_after_restart(tmp_path, nodes):
    web = nodes(tmp_path, "web", "serve", WORKERS=0)
    key = web.flask("create-user", "term@example.org")
    web.start()
    worker = nodes(tmp_path, "worker", "worker", SHUTDOWN_GRACE_S=0).start()
    progress_key = submit(web, key, SLOW, output="avif")
    wait_until(lambda: job_of(web, progress_key)[1] == "running", 30, "the job never started")
    assert worker.signal(signal.SIGTERM) == 0
    job_id, status, attempts, claimed_by = job_of(web, progress_key)
    assert (status, attempts, claimed_by) == ("queued", 0, None)  # released, not counted as a crash
    again = nodes(tmp_path, "worker-2", "worker").start()
    wait_until(lambda: job_of(web, progress_key)[1] == "done", 180, "the job never finished after restart")
    assert job_of(web, progress_key)[2] == 1
    assert done_counts(worker, again) == {job_id: 1}


def test_sigterm_lets_flask_serve_finish_its_running_job_within_the_grace_period(tmp_path, nodes):
    server = nodes(tmp_path, "serve", "serve", WORKERS=1, SHUTDOWN_GRACE_S=240)
    key = server.flask("create-user", "grace@example.org")
    server.start()
    progress_key = submit(server, key, SLOW, output="avif")
    wait_until(lambda: job_of(server, progress_key)[1] == "running", 30, "the job never started")
    assert server.signal(signal.SIGTERM) == 0
    job_id, status, attempts, _ = job_of(server, progress_key)
    assert (status, attempts) == ("done", 1)
    assert done_counts(server) == {job_id: 1}


def test_a_web_node_and_two_workers_finish_40_jobs_once_each_when_one_worker_is_killed(tmp_path, backend, nodes):
    web = nodes(tmp_path, "web", "serve", backend=backend, WORKERS=0)
    key = web.flask("create-user", "multi@example.org")
    web.start()
    workers = [nodes(tmp_path, f"worker-{n}", "worker", "--threads", "1", backend=backend).start() for n in (1, 2)]
    images = [encode(photo(900, 600, seed=seed), "jpeg", quality=92) for seed in range(4)]
    target = 30 * 1024

    # An idle system: how long until a worker starts a new job (SQLite: the 0.5 s poll; PostgreSQL: NOTIFY).
    time.sleep(1.5)
    submitted = time.monotonic()
    first = submit(web, key, images[0], output="jpeg", target_size="30KB")
    wait_until(lambda: job_of(web, first)[1] != "queued", 30, "the first job never started")
    waited = time.monotonic() - submitted
    print(f"\nan idle worker started a new job {waited:.2f} s after its 202")
    assert waited < 5  # generous for a loaded machine (this wait reads the row every 0.05 s on a new pool)

    with ThreadPoolExecutor(4) as pool:
        keys = [first, *pool.map(lambda n: submit(web, key, images[n % 4], output="jpeg", target_size="30KB"),
                                 range(1, 40))]
    victim = workers[0]
    victim_ids = {row[0] for row in query(web, "SELECT id FROM workers WHERE pid = ?", victim.process.pid)}
    wait_until(lambda: len(done_counts(*workers)) >= 8
               and query(web, "SELECT 1 FROM jobs WHERE status = 'running' AND claimed_by IN"
                         f" ({','.join('?' * len(victim_ids))})", *victim_ids), 120, "the victim never ran a job")
    victim.signal(signal.SIGKILL)  # mid-job: its lease runs out, the other worker's reaper queues the job again
    if backend:  # PostgreSQL ends every connection of the web node and the surviving worker, mid-run
        wait_until(lambda: len(done_counts(*workers)) >= 16, 120, "the survivor never got going")
        assert cut_connections() >= 2  # at least the web node's pool and the worker's
        answer = requests.get(web.url + f"/result/{first}", timeout=30)  # the web node reconnects
        assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text
    wait_until(lambda: all(job_of(web, k)[1] == "done" for k in keys), 240, "not all jobs finished")

    counts = done_counts(*workers)
    ids = {job_of(web, k)[0] for k in keys}
    assert set(counts) == ids and set(counts.values()) == {1}, counts
    assert query(web, "SELECT SUM(count) FROM usage")[0][0] == 40
    assert max(job_of(web, k)[2] for k in keys) == 2  # the killed worker's job ran a second time
    for progress_key in keys:
        body = requests.get(web.url + f"/result/{progress_key}", timeout=30).json()
        assert body["status"] == "done" and body["bytes"] <= target, body
        download = requests.get(body["download"], timeout=30)
        assert download.status_code == 200 and len(download.content) == body["bytes"]
        with Image.open(io.BytesIO(download.content)) as image:
            image.load()
            assert image.format == "JPEG"
