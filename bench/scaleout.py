"""python -m bench.scaleout [--postgres URL] [--before REV]: web node + N `flask worker`s, SQLite vs PostgreSQL.

Real processes, as a multi-host install runs them (here on one machine): `flask serve` with
WORKERS=0, and 1 or 2 `flask worker --threads 1`, on the SQLite file (the default) or on
PostgreSQL (a fresh schema, dropped afterwards); inputs and results in a folder for both, so
the database is the only difference.

1. End-to-end jobs/s: a batch of jobs posted to the web node (4 client threads), timed from the
   first POST until the last job is done. Two workloads on the same images for every engine:
   "small" (a 64x64 PNG to WebP: what is left is the queue path: HTTP, insert + NOTIFY, claim,
   the hop to the slot's child, finish) and "photo" (a 1728x1152 mosaic of the four test photos,
   JPEG q90, to auto JPEG: the CPU work). Rounds are interleaved across configurations (all
   processes stay up), and the median of the rounds is printed, with the ratio to 1 worker.
2. Pick-up latency of an idle worker: one small job at a time, after a random idle gap, timed
   from the 202 until its row leaves `queued` (read every 2 ms on a connection of the bench's
   own; a claim before the 202 arrives counts as 0). SQLite: the 0.5 s poll. PostgreSQL: LISTEN/
   NOTIFY; with `--before REV` also that revision's code (git archive), e.g. the poll alone.

A measurement, not a test. Prints Markdown tables (bench/RESULTS.md keeps the latest).
"""

import argparse
import contextlib
import io
import os
import pathlib
import platform
import random
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

from imgsmaller import db

from .queue_db import fresh_schema
from .soak import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
PHOTOS = ROOT / "tests" / "data" / "photos"


def small_image():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def photo_image():
    """1728x1152 (2 MP): a 3x3 mosaic of the test photos (576x384 each), real detail everywhere."""
    tiles = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("*.jpg"))]
    mosaic = Image.new("RGB", (3 * 576, 3 * 384))
    for n in range(9):
        mosaic.paste(tiles[n % len(tiles)].resize((576, 384)), ((n % 3) * 576, (n // 3) * 384))
    buffer = io.BytesIO()
    mosaic.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


WORKLOADS = {"small": (small_image, {"output": "webp"}), "photo": (photo_image, {"output": "jpeg"})}


class Node:
    def __init__(self, root, env, log, *args):
        self.root, self.env, self.log, self.args = root, env, log, args
        self.port = free_port() if args[0] == "serve" else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        args = [*self.args, "--port", str(self.port)] if self.port else list(self.args)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([FLASK, "--app", "app", *args], cwd=self.root, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def ready(self):
        assert self.process.poll() is None, pathlib.Path(self.log).read_text()[-3000:]
        if self.port is None:
            return "waiting for jobs" in pathlib.Path(self.log).read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Install:
    """One web node and `workers` workers on their own database and folder."""

    def __init__(self, name, root, folder, database_url, workers):
        self.name, self.database = name, database_url or os.path.join(folder, "app.sqlite3")
        env = {**os.environ, "IMGSMALLER_DATABASE": os.path.join(folder, "app.sqlite3"),
               "IMGSMALLER_DATABASE_URL": database_url or "", "IMGSMALLER_STORAGE_DIR": os.path.join(folder, "files"),
               "IMGSMALLER_SECRET_KEY": "bench", "IMGSMALLER_DAILY_LIMIT": "1000000", "IMGSMALLER_LOG_FORMAT": "text"}
        env.pop("IMGSMALLER_STORAGE_URL", None)
        subprocess.run([FLASK, "--app", "app", "init-db"], cwd=root, env=env, check=True, capture_output=True)
        created = subprocess.run([FLASK, "--app", "app", "create-user", f"{name}@example.org"], cwd=root, env=env,
                                 check=True, capture_output=True, text=True)
        self.key = created.stdout.strip().splitlines()[-1]
        self.web = Node(root, {**env, "IMGSMALLER_WORKERS": "0"}, os.path.join(folder, "web.log"), "serve")
        self.workers = [Node(root, env, os.path.join(folder, f"worker-{n}.log"), "worker", "--threads", "1")
                        for n in range(workers)]
        self.session = requests.Session()
        self.watch = db.connect_unpooled(self.database)

    def start(self):
        for node in (self.web, *self.workers):
            node.start()
        return self

    def wait_ready(self):
        deadline = time.monotonic() + 120
        while not all(node.ready() for node in (self.web, *self.workers)):
            assert time.monotonic() < deadline, f"{self.name} did not start"
            time.sleep(0.1)

    def stop(self):
        for node in (self.web, *self.workers):
            node.stop()
        self.watch.close()

    def submit(self, data, fields):
        response = self.session.post(self.web.url + "/api/v1/compress", headers={"X-API-Key": self.key},
                                     files={"file": ("a", data)}, data=fields, timeout=120)
        assert response.status_code == 202, response.text
        return response.json()["progress_key"]

    def unfinished(self, since_id):
        return self.watch.execute("SELECT count(*) FROM jobs WHERE id > ? AND status NOT IN ('done', 'failed')",
                                  (since_id,)).fetchone()[0]

    def last_id(self):
        return self.watch.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]

    def batch(self, data, fields, count):
        """Seconds from the first POST until `count` jobs are done (4 client threads)."""
        since = self.last_id()
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: self.submit(data, fields), range(count)))
        while self.unfinished(since):
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        failed = self.watch.execute("SELECT count(*) FROM jobs WHERE id > ? AND status = 'failed'",
                                    (since,)).fetchone()[0]
        assert failed == 0, f"{self.name}: {failed} job(s) failed"
        return seconds

    def pickup(self, data, fields):
        """Seconds from the 202 until the job's row is no longer queued."""
        key = self.submit(data, fields)
        answered = time.perf_counter()
        while self.watch.execute("SELECT status FROM jobs WHERE progress_key = ?", (key,)).fetchone()[0] == "queued":
            time.sleep(0.002)
        return time.perf_counter() - answered


def checkout(rev, folder):
    """The tree of git revision `rev` in `folder` (for a before/after of the same bench)."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def median_ms(values):
    return 1000 * statistics.median(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("IMGSMALLER_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default: IMGSMALLER_TEST_DATABASE_URL); SQLite only without it")
    parser.add_argument("--before", help="also measure the pick-up latency of this git revision on PostgreSQL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=40, help="small jobs per batch")
    parser.add_argument("--photo", type=int, default=8, help="photo jobs per batch")
    parser.add_argument("--pickups", type=int, default=15)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    images = {name: (make(), fields) for name, (make, fields) in WORKLOADS.items()}
    engines = ["sqlite"] + (["postgresql"] if args.postgres else [])
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        installs = {}
        for engine in engines:
            for workers in (1, 2):
                name = f"{engine}-{workers}"
                os.makedirs(os.path.join(folder, name))
                url = stack.enter_context(fresh_schema(args.postgres)) if engine == "postgresql" else None
                installs[engine, workers] = Install(name, ROOT, os.path.join(folder, name), url, workers)
        if args.before and args.postgres:
            old = checkout(args.before, os.path.join(folder, "before-tree"))
            os.makedirs(os.path.join(folder, "before"))
            url = stack.enter_context(fresh_schema(args.postgres))
            installs["before", 1] = Install("before", old, os.path.join(folder, "before"), url, 1)
        for install in installs.values():
            stack.callback(install.stop)
            install.start()
        for install in installs.values():
            install.wait_ready()
        for install in installs.values():  # warm: first imports in the children, the pools
            install.batch(*images["small"], 2)

        rates = {}
        for _ in range(args.rounds):
            for (engine, workers), install in installs.items():
                if engine == "before":
                    continue
                for workload, count in (("small", args.small), ("photo", args.photo)):
                    seconds = install.batch(*images[workload], count)
                    rates.setdefault((workload, engine, workers), []).append(count / seconds)
        pickups = {}
        for (engine, workers), install in installs.items():
            if workers == 1:
                for _ in range(args.pickups):
                    time.sleep(random.uniform(0.3, 1.3))
                    pickups.setdefault(engine, []).append(install.pickup(*images["small"]))

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.machine()}, {os.cpu_count()} cores"
          f" · Python {platform.python_version()} · load average {load_before[0]:.1f} before,"
          f" {os.getloadavg()[0]:.1f} after · median of {args.rounds} rounds\n")
    print("| workload | engine | workers | jobs/s (median) | runs | vs 1 worker | vs SQLite |")
    print("|---|---|---|---|---|---|---|")
    for workload, count in (("small", args.small), ("photo", args.photo)):
        for engine in engines:
            for workers in (1, 2):
                runs = rates[workload, engine, workers]
                rate = statistics.median(runs)
                one = statistics.median(rates[workload, engine, 1])
                sqlite = statistics.median(rates[workload, "sqlite", workers])
                print(f"| {workload} ×{count} | {engine} | {workers} | {rate:.2f} |"
                      f" {' / '.join(f'{r:.2f}' for r in runs)} | {rate / one:.2f}× | {rate / sqlite:.2f}× |")
    print("\n| idle worker picks up a job (from the 202) | median ms | p90 ms | max ms |")
    print("|---|---|---|---|")
    labels = {"sqlite": "SQLite: poll every 0.5 s", "postgresql": "PostgreSQL: LISTEN/NOTIFY (poll 2 s fallback)",
              "before": f"PostgreSQL, revision {args.before}"}
    for engine, values in pickups.items():
        values = sorted(values)
        print(f"| {labels[engine]} | {median_ms(values):.0f} | {1000 * values[int(0.9 * (len(values) - 1))]:.0f} |"
              f" {1000 * values[-1]:.0f} |")


if __name__ == "__main__":
    main()
