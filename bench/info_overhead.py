"""python -m bench.info_overhead: GET /api/v1/info req/s against a bare Flask JSON view, same waitress.

Issue 11's request-overhead measurement. Two servers in child processes, each on its
own port: the real app (`flask --app app serve`, SQLite on a temporary instance, one
account whose key the requests send) and a bare Flask app with one JSON view, both
under waitress with `serve`'s options (8 threads). The load is `wrk` (Debian package)
with 16 connections when installed, else a bounded Python loop of 16 keep-alive threads.
The servers take turns (bare, real, bare, real ...) so that a shared machine's load
weighs on both alike; the table gives each round and the median ratio.

    python -m bench.info_overhead [--seconds 5] [--rounds 3] [--connections 16]
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def real_server(instance, port):
    env = dict(os.environ, FLASK_APP="app", IMGSMALLER_DATABASE=str(instance / "db.sqlite3"),
               IMGSMALLER_STORAGE_DIR=str(instance / "storage"), IMGSMALLER_WORKERS="1")
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    out = subprocess.run([*flask, "create-user", "bench@example.org"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    key = out.strip().splitlines()[-1]
    proc = subprocess.Popen([*flask, "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, key


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
    args = parser.parse_args(argv)
    load = wrk if shutil.which("wrk") else python_load
    seconds = int(args.seconds) if load is wrk else args.seconds
    with tempfile.TemporaryDirectory(prefix="bench-info-") as tmp:
        bare_port, real_port = free_port(), free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        real, key = real_server(pathlib.Path(tmp), real_port)
        try:
            wait_for_port(bare_port, bare)
            wait_for_port(real_port, real)
            load(bare_port, None, 1, args.connections)   # warm-up
            load(real_port, key, 1, args.connections)
            rounds = []
            for _ in range(args.rounds):
                rounds.append((load(bare_port, None, seconds, args.connections),
                               load(real_port, key, seconds, args.connections)))
        finally:
            for proc in (bare, real):
                proc.terminate()
                proc.wait(timeout=30)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    avg = os.getloadavg()
    print(f"Run {started}, {os.cpu_count()} cores, load average {avg[0]:.1f} / {avg[1]:.1f} / {avg[2]:.1f}; "
          f"load: {'wrk -t2' if load is wrk else 'Python loop'}, {args.connections} connections, {seconds} s per turn")
    print()
    print("| round | bare Flask req/s | GET /api/v1/info req/s | ratio |")
    print("|---|---|---|---|")
    for i, (b, r) in enumerate(rounds, 1):
        print(f"| {i} | {b:,.0f} | {r:,.0f} | {r / b:.2f} |")
    print(f"| median | {statistics.median(b for b, _ in rounds):,.0f} | {statistics.median(r for _, r in rounds):,.0f} "
          f"| {statistics.median(r / b for b, r in rounds):.2f} |")


if __name__ == "__main__":
    main()
