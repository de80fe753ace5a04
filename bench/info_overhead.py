"""python -m bench.info_overhead: GET /api/v1/info req/s against a bare Flask JSON view, same waitress.

Issue 11's request-overhead measurement. Two servers in child processes, each on its
own port: the real app (`flask --app app serve`, SQLite on a temporary instance, one
account whose key the requests send) and a bare Flask app with one JSON view, both
under waitress with `serve`'s options (8 threads). The load is `wrk` (Debian package)
with 16 connections when installed, else a bounded Python loop of 16 keep-alive threads.
The servers take turns (bare, real, bare, real ...) so that a shared machine's load
weighs on both alike; the table gives each round and the median ratio. `--base REV`
adds the app of that git revision as a third server, for before/after in one run.
A second table gives each server's CPU time per request (user + system, from
/proc/<pid>/stat over the turn): on a shared machine the steadier number.

    python -m bench.info_overhead [--seconds 5] [--rounds 3] [--connections 16] [--base REV]
"""

import argparse
import http.client
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .soak import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent

BARE = r"""
import sys
from flask import Flask
from waitress import create_server
app = Flask("bare")
@app.get("/api/v1/info")
def info():
    return {"endpoint": "http://127.0.0.1/api/v1/compress", "remaining_today": 500, "limit": 500}
server = create_server(app, listen="127.0.0.1:" + sys.argv[1], threads=8, connection_limit=1000,
                       channel_timeout=30, cleanup_interval=10)
server.run()
"""


def wait_for_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def real_server(instance, port, code=ROOT):
    """The app of the checkout at `code` under `flask serve`, on a new SQLite database in `instance`."""
    env = dict(os.environ, FLASK_APP="app", IMGSMALLER_DATABASE=str(instance / "db.sqlite3"),
               IMGSMALLER_STORAGE_DIR=str(instance / "storage"), IMGSMALLER_WORKERS="1", PYTHONPATH=str(code))
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    out = subprocess.run([*flask, "create-user", "bench@example.org"], cwd=code, env=env, check=True,
                         capture_output=True, text=True).stdout
    key = out.strip().splitlines()[-1]
    proc = subprocess.Popen([*flask, "serve", "--port", str(port)], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, key


def extract(rev, into):
    """The app of git revision `rev` (app.py, the package, the schemas), in folder `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "app.py", "imgsmaller", "schema.sql",
                              "schema_postgres.sql"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (Linux), or None elsewhere."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(load, proc, port, key, seconds, connections):
    """(req/s, CPU microseconds of the server per request or None) of one turn."""
    before = cpu_seconds(proc.pid)
    rate = load(port, key, seconds, connections)
    after = cpu_seconds(proc.pid)
    cpu = None if before is None or after is None or not rate else (after - before) / (rate * seconds) * 1e6
    return rate, cpu


def wrk(port, key, seconds, connections):
    header = ["-H", f"X-API-Key: {key}"] if key else []
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", *header,
                          f"http://127.0.0.1:{port}/api/v1/info"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{bad.group(1)} failed requests:\n{out}")
    return float(found.group(1))


def python_load(port, key, seconds, connections):
    """A bounded load loop: `connections` keep-alive clients for `seconds`."""
    counts = [0] * connections
    deadline = time.monotonic() + seconds
    headers = {"X-API-Key": key} if key else {}

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < deadline:
            conn.request("GET", "/api/v1/info", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.info_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--base", help="also serve the app of this git revision, for before/after")
    args = parser.parse_args(argv)
    load = wrk if shutil.which("wrk") else python_load
    seconds = int(args.seconds) if load is wrk else args.seconds
    with tempfile.TemporaryDirectory(prefix="bench-info-") as tmp:
        tmp = pathlib.Path(tmp)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        servers = [("bare Flask", bare, bare_port, None)]
        apps = [("this checkout", ROOT)]
        if args.base:
            apps.insert(0, (f"app at {args.base}", extract(args.base, _made(tmp / "base"))))
        try:
            for name, code in apps:
                port = free_port()
                proc, key = real_server(_made(tmp / f"instance-{len(servers)}"), port, code)
                servers.append((name, proc, port, key))
            for _, proc, port, key in servers:
                wait_for_port(port, proc)
                load(port, key, 1, args.connections)   # warm-up
            turns = [[measured(load, proc, port, key, seconds, args.connections) for _, proc, port, key in servers]
                     for _ in range(args.rounds)]
        finally:
            for _, proc, _, _ in servers:
                proc.terminate()
                proc.wait(timeout=30)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    avg = os.getloadavg()
    rounds = [[rate for rate, _ in turn] for turn in turns]
    print(f"Run {started}, {os.cpu_count()} cores, load average {avg[0]:.1f} / {avg[1]:.1f} / {avg[2]:.1f}; "
          f"load: {'wrk -t2' if load is wrk else 'Python loop'}, {args.connections} connections, {seconds} s per turn")
    print()
    names = [name for name, *_ in servers]
    print("| round | " + " | ".join(f"{n} req/s" for n in names) + " | " + " | ".join(f"{n} / bare" for n in names[1:])
          + " |")
    print("|---" * (2 * len(names)) + "|")
    for i, values in enumerate(rounds, 1):
        print(f"| {i} | " + " | ".join(f"{v:,.0f}" for v in values) + " | "
              + " | ".join(f"{v / values[0]:.2f}" for v in values[1:]) + " |")
    medians = [statistics.median(r[i] for r in rounds) for i in range(len(names))]
    ratios = [statistics.median(r[i] / r[0] for r in rounds) for i in range(1, len(names))]
    print("| median | " + " | ".join(f"{m:,.0f}" for m in medians) + " | " + " | ".join(f"{q:.2f}" for q in ratios)
          + " |")
    if all(cpu is not None for turn in turns for _, cpu in turn):
        print_cpu(names, [[cpu for _, cpu in turn] for turn in turns])


def print_cpu(names, rounds):
    """The servers' CPU microseconds per request, each round and the medians."""
    print()
    print("| round | " + " | ".join(f"{n} CPU us/request" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for i, values in enumerate(rounds, 1):
        print(f"| {i} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[i] for r in rounds):,.0f}" for i in range(len(names)))
          + " |")


def _made(path):
    path.mkdir(parents=True, exist_ok=True)
    return path

if __name__ == "__main__":
    main()
