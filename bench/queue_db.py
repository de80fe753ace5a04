"""python -m bench.queue_db [--postgres URL]: the database's share of a job, on SQLite and PostgreSQL.

1. Statements and round-trips per job, from the compress request to the download, counted
   on the real app (jobs inline, a 64x64 PNG): every statement the code sends, plus, on
   PostgreSQL, the pool's check of a connection when it is handed out (one round-trip).
2. Queue throughput without the CPU work: threads with a connection each enqueue jobs
   (quota charge + insert, one transaction), then claim and finish them (two transactions
   each), as fast as the database lets them.

A measurement, not a test. PostgreSQL runs in a fresh schema, dropped afterwards.
"""

import argparse
import collections
import contextlib
import io
import os
import secrets
import sys
import tempfile
import threading
import time
import types
import urllib.parse

from imgsmaller import accounts, db, job_store, pool, postgres, quota

# SQLite runs with synchronous=NORMAL in WAL mode (a commit does not wait for the disk);
# PostgreSQL's default waits for the WAL flush at each commit. This row shows PostgreSQL
# with the same trade-off, set per session; the service itself keeps the default.
NO_SYNC = "postgresql, synchronous_commit=off"
PHASES = ("compress request", "job (claim + finish)", "result poll", "download")


class Counter:
    def __init__(self):
        self.phase = None
        self.statements = collections.Counter()
        self.checks = collections.Counter()

    def statement(self):
        if self.phase:
            self.statements[self.phase] += 1

    def check(self):
        if self.phase:
            self.checks[self.phase] += 1


@contextlib.contextmanager
def counting(counter):
    """Count every statement sent on either engine, and the pool's connection checks."""
    original_init = db.SqliteConnection.__init__
    original_execute, original_many = postgres.PgConnection.execute, postgres.PgConnection.executemany
    original_check, original_run = postgres._checked_conn, pool.JobRunner.run

    def sqlite_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.set_trace_callback(lambda sql: counter.statement())

    def pg_execute(self, sql, params=()):
        counter.statement()
        return original_execute(self, sql, params)

    def pg_many(self, sql, seq):
        seq = list(seq)
        for _ in seq:
            counter.statement()
        return original_many(self, sql, seq)

    def check(connection_pool, url):
        counter.check()
        return original_check(connection_pool, url)

    def run(self, job_id):
        outer, counter.phase = counter.phase, PHASES[1]
        try:
            return original_run(self, job_id)
        finally:
            counter.phase = outer

    db.SqliteConnection.__init__ = sqlite_init
    postgres.PgConnection.execute, postgres.PgConnection.executemany = pg_execute, pg_many
    postgres._checked_conn = check
    pool.JobRunner.run = run
    try:
        yield
    finally:
        db.SqliteConnection.__init__ = original_init
        postgres.PgConnection.execute, postgres.PgConnection.executemany = original_execute, original_many
        postgres._checked_conn = original_check
        pool.JobRunner.run = original_run


def statements_per_job(database_url, folder, jobs=5):
    from PIL import Image

    from imgsmaller import create_app

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "PNG")
    counter = Counter()
    with counting(counter):
        app = create_app({"TESTING": True, "DATABASE": os.path.join(folder, "app.sqlite3"),
                          "DATABASE_URL": database_url, "STORAGE_DIR": os.path.join(folder, "storage"),
                          "SECRET_KEY": "bench", "INLINE_JOBS": True})
        try:
            connection = db.connect(db.database_of(app.config))
            _, key = accounts.create_user(connection, f"bench{secrets.token_hex(4)}@example.org")
            connection.close()
            client = app.test_client()
            for _ in range(jobs):
                counter.phase = PHASES[0]
                body = client.post("/api/v1/compress", headers={"X-API-Key": key},
                                   data={"file": (io.BytesIO(buffer.getvalue()), "a.png")}).get_json()
                counter.phase = PHASES[2]
                result = client.get(f"/result/{body['progress_key']}").get_json()
                counter.phase = PHASES[3]
                assert client.get(result["download"]).status_code == 200
                counter.phase = None
        finally:
            app.extensions["imgsmaller.jobs"].shutdown()
    return {p: (counter.statements[p] / jobs, counter.checks[p] / jobs) for p in PHASES}


class FakeRequest(types.SimpleNamespace):
    pass


def request_like():
    return FakeRequest(probe=types.SimpleNamespace(format="png", width=64, height=64), data=b"x" * 1000,
                       target_size=None, output="webp", filename="a")


def throughput(target, threads, jobs):
    """(enqueue jobs/s, claim+finish jobs/s) with `threads` connections, one account each."""
    per_thread = jobs // threads
    result = types.SimpleNamespace(format="webp", data=b"x" * 500, width=64, height=64, quality_score=80.0, encodes=3)

    def enqueue(connection):
        user_id, _ = accounts.create_user(connection, f"t{secrets.token_hex(6)}@example.org", daily_limit=10**9)
        user = accounts.get_user(connection, user_id)
        for _ in range(per_thread):
            with db.transaction(connection):
                quota.charge(connection, user, 100, db.utcnow())
                job_store.insert_job(connection, user_id=user_id, request=request_like(), ttl_hours=24, now=db.utcnow())

    def work(connection):
        while (job := job_store.claim_next_job(connection, threading.current_thread().name)) is not None:
            job_store.finish_job(connection, job, result)

    return tuple(per_thread * threads / timed(target, threads, step) for step in (enqueue, work))


def timed(target, threads, step):
    connections = [db.connect_unpooled(target) for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(connection):
        barrier.wait()
        step(connection)

    workers = [threading.Thread(target=run, args=(c,)) for c in connections]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return seconds


@contextlib.contextmanager
def fresh_schema(url):
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query) + [("options", f"-csearch_path={schema}")]
        scoped = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        try:
            yield scoped
        finally:
            db.close_pools(scoped)
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("IMGSMALLER_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default: IMGSMALLER_TEST_DATABASE_URL); SQLite only without it")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", default="1,4,16")
    args = parser.parse_args(argv)
    engines = ["sqlite"] + (["postgresql", NO_SYNC] if args.postgres else [])
    with tempfile.TemporaryDirectory() as folder:
        print("Statements (and pool checks) per job, on the real app:")
        print("| engine | " + " | ".join(PHASES) + " | total statements | round-trips (PostgreSQL) |")
        print("|---" * (len(PHASES) + 3) + "|")
        for engine in engines[:2]:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(fresh_schema(args.postgres)) if engine == "postgresql" else None
                counts = statements_per_job(url, os.path.join(folder, engine))
            cells = [f"{s:g}" + (f" + {c:g} check" if c else "") for s, c in counts.values()]
            total = sum(s for s, _ in counts.values())
            trips = total + sum(c for _, c in counts.values())
            print(f"| {engine} | " + " | ".join(cells) + f" | {total:g} | {trips:g} |" if engine == "postgresql"
                  else f"| {engine} | " + " | ".join(cells) + f" | {total:g} | (in-process) |")
        print(f"\nQueue throughput, {args.jobs} jobs, no CPU work (jobs/s):")
        print("| engine | threads | enqueue (charge + insert) | claim + finish |")
        print("|---|---|---|---|")
        for engine in engines:
            for threads in [int(t) for t in args.threads.split(",")]:
                with contextlib.ExitStack() as stack:
                    if engine != "sqlite":
                        target = stack.enter_context(fresh_schema(args.postgres))
                        if engine == NO_SYNC:
                            target += "%20-csynchronous_commit%3Doff"
                    else:
                        target = os.path.join(folder, f"queue-{threads}.sqlite3")
                    db.init_db(target)
                    enqueue, work = throughput(target, threads, args.jobs)
                print(f"| {engine} | {threads} | {enqueue:,.0f} | {work:,.0f} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
