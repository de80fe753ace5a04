"""Soak: drive a real `flask --app app serve` for N minutes and watch its resources stay flat.

    python -m bench.soak [--minutes 10] [--clients 3] [--slow-clients 2] [--sample-s 10]

Starts waitress on a free loopback port with a temporary instance (its own database and
storage, results kept 1 minute and expired every 20 s), makes two accounts, and runs a
bounded mix until the time is up: compress of every input format to every output
(targets and auto), /api/v1/info, result polls, downloads, bad inputs (corrupt and
truncated images, text, a huge target_size, bad JSON, a wrong key) from a second
account, and slow clients that drip a request a byte a second. Every `--sample-s` it
records the server's RSS, open fds, threads, database and WAL size and storage size,
then prints the table, the answers by status, and each column's change from the end
of warm-up (the first fifth) to the end. Exit 1 on any 5xx or a connection error.
Linux only (reads /proc).
"""

import argparse
import io
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import requests
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = pathlib.Path(sys.executable).parent
FORMATS = ("jpeg", "png", "webp", "avif")
OUTPUTS = ("original", "jpeg", "png", "webp", "avif")


def picture(width, height, seed):
    rng = random.Random(seed)
    image = Image.effect_noise((width, height), 40).convert("RGB")
    overlay = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.blend(image, overlay, 0.6)
    if rng.random() < 0.3:
        image.putalpha(Image.linear_gradient("L").rotate(90).resize((width, height)))
    return image


def encode(image, fmt):
    if fmt == "jpeg":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt.upper(), **({"speed": 10} if fmt == "avif" else {}))
    return buffer.getvalue()


def make_inputs():
    inputs = []
    for index, fmt in enumerate(FORMATS * 3):
        inputs.append((fmt, encode(picture(random.Random(index).randint(48, 240), 64 + index * 8, index), fmt)))
    return inputs


def bad_inputs(inputs):
    png = dict(inputs)["png"]
    return [
        ("file", png[:len(png) // 2]),                      # truncated: 422
        ("file", png[:40] + b"\x00" * 200 + png[240:]),     # corrupt: 422
        ("file", b"just some text, not an image"),          # 415
        ("json", {"file_base64": "!!!not base64!!!"}),      # 422
        ("json", {"target_size": "9" * 5000, "file_base64": "aGVsbG8="}),  # 422, bounded
        ("raw", b"{not json"),                              # 422
        ("key", None),                                      # 401
    ]


class Server:
    def __init__(self, instance, port):
        self.instance = instance
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ,
                    "IMGSMALLER_DATABASE": str(instance / "soak.sqlite3"),
                    "IMGSMALLER_STORAGE_DIR": str(instance / "storage"),
                    "IMGSMALLER_SECRET_KEY": "soak",
                    "IMGSMALLER_WORKERS": "2",
                    "IMGSMALLER_RESULT_TTL_HOURS": str(1 / 60),
                    "IMGSMALLER_CLEANUP_INTERVAL_S": "20",
                    "IMGSMALLER_REFUSED_IMAGES_MAX_PER_HOUR": "1000000",
                    "IMGSMALLER_DAILY_LIMIT": "1000000"}
        self.process = None

    def flask(self, *args):
        return subprocess.run([str(VENV_BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60, check=True).stdout

    def start(self):
        self.log = open(self.instance / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(VENV_BIN / "flask"), "--app", "app", "serve", "--port", str(self.port), "--threads", "8",
             "--channel-timeout", "30"], cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("server did not start; see " + str(self.instance / "server.log"))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def sample(self):
        pid = self.process.pid
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        database = self.instance / "soak.sqlite3"
        wal = pathlib.Path(str(database) + "-wal")
        return {
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"]),
            "db_kb": database.stat().st_size / 1024,
            "wal_kb": wal.stat().st_size / 1024 if wal.exists() else 0,
            "storage_kb": sum(p.stat().st_size for p in (self.instance / "storage").rglob("*") if p.is_file()) / 1024,
        }


class Load:
    def __init__(self, server, key, bad_key, inputs, stop):
        self.server, self.key, self.bad_key = server, key, bad_key
        self.inputs, self.bad = inputs, bad_inputs(inputs)
        self.stop = stop
        self.statuses = Counter()
        self.errors = Counter()
        self.lock = threading.Lock()

    def record(self, what, response):
        with self.lock:
            self.statuses[(what, response.status_code)] += 1

    def call(self, session, what, method, path, **kwargs):
        try:
            response = session.request(method, self.server.url + path, timeout=120, **kwargs)
        except requests.RequestException as error:
            with self.lock:
                self.errors[f"{what}: {type(error).__name__}"] += 1
            return None
        self.record(what, response)
        return response

    def client(self, seed):
        rng, session = random.Random(seed), requests.Session()
        headers = {"X-API-Key": self.key}
        while not self.stop.is_set():
            roll = rng.random()
            if roll < 0.5:
                self.compress_one(session, rng, headers)
            elif roll < 0.75:
                self.call(session, "info", "GET", "/api/v1/info", headers=headers)
            else:
                self.bad_one(session, rng)
            self.stop.wait(rng.uniform(0.05, 0.3))

    def compress_one(self, session, rng, headers):
        fmt, data = rng.choice(self.inputs)
        fields = {"output": rng.choice(OUTPUTS), "target_size": rng.choice(["auto", "3KB", "8KB", "20KB"])}
        response = self.call(session, "compress", "POST", "/api/v1/compress", headers=headers,
                             files={"file": (f"image.{fmt}", data)}, data=fields)
        if response is None or response.status_code != 202:
            return
        key = response.json()["progress_key"]
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            result = self.call(session, "result", "GET", f"/result/{key}")
            if result is None or result.status_code != 200 or result.json()["status"] != "processing":
                break
            self.stop.wait(0.2)
        else:
            return
        if result is not None and result.status_code == 200 and result.json()["status"] == "done":
            self.call(session, "download", "GET", result.json()["download"].removeprefix(self.server.url))

    def bad_one(self, session, rng):
        kind, payload = rng.choice(self.bad)
        headers = {"X-API-Key": self.bad_key}
        if kind == "file":
            self.call(session, "bad", "POST", "/api/v1/compress", headers=headers, files={"file": ("x", payload)})
        elif kind == "json":
            self.call(session, "bad", "POST", "/api/v1/compress", headers=headers, json=payload)
        elif kind == "raw":
            self.call(session, "bad", "POST", "/api/v1/compress", data=payload,
                      headers={**headers, "Content-Type": "application/json"})
        else:
            self.call(session, "bad", "GET", "/api/v1/info", headers={"X-API-Key": "isk_wrong"})

    def slow_client(self, seed):
        """Drip a compress request a byte a second until the server hangs up, then start again."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.server.port), timeout=60) as sock:
                    request = (f"POST /api/v1/compress HTTP/1.1\r\nHost: x\r\nX-API-Key: {self.key}\r\n"
                               f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
                    outcome = "dripped to the end"
                    for byte in request + b'{"file_base64": "' + b"A" * 1000:
                        if self.stop.wait(rng.uniform(0.5, 1.5)):
                            outcome = "still dripping at the end"
                            break
                        sock.sendall(bytes([byte]))
                with self.lock:
                    self.statuses[("slow", outcome)] += 1
            except OSError:
                with self.lock:
                    self.statuses[("slow", "closed by server")] += 1


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_key(server, email):
    return server.flask("create-user", email).strip().splitlines()[-1]


def run(minutes, clients, slow_clients, sample_s):
    """Soak a fresh server; returns (samples [(seconds, {column: value})], Load with the answers)."""
    instance = pathlib.Path(tempfile.mkdtemp(prefix="imgsmaller-soak-"))
    server = Server(instance, free_port())
    server.flask("init-db")
    key, bad_key = create_key(server, "soak@example.org"), create_key(server, "bad@example.org")
    server.start()
    stop = threading.Event()
    load = Load(server, key, bad_key, make_inputs(), stop)
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True) for i in range(clients)]
    threads += [threading.Thread(target=load.slow_client, args=(100 + i,), daemon=True) for i in range(slow_clients)]
    samples = []
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        while time.monotonic() - started < minutes * 60:
            samples.append((time.monotonic() - started, server.sample()))
            print(_row(*samples[-1]), file=sys.stderr, flush=True)
            time.sleep(sample_s)
        samples.append((time.monotonic() - started, server.sample()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.stop()
    shutil.rmtree(instance, ignore_errors=True)
    return samples, load


def server_errors(load):
    return sum(n for (_what, status), n in load.statuses.items() if isinstance(status, int) and status >= 500)


HEADER = "| t (s) | RSS MB | fds | threads | database KB | WAL KB | storage KB |\n|---:|---:|---:|---:|---:|---:|---:|"


def _row(t, s):
    return (f"| {t:.0f} | {s['rss_mb']:.1f} | {s['fds']} | {s['threads']} | {s['db_kb']:.0f} | "
            f"{s['wal_kb']:.0f} | {s['storage_kb']:.0f} |")


def _report(samples, load):
    lines = [HEADER, *(_row(t, s) for t, s in samples), ""]
    warm_index = max(1, len(samples) // 5)
    after = [s for _, s in samples[warm_index:]]
    lines.append(f"After warm-up (from {samples[warm_index][0]:.0f} s), min-max: " + ", ".join(
        f"{name} {min(s[name] for s in after):.0f}-{max(s[name] for s in after):.0f}" for name in after[0]))
    requests_after = sum(load.statuses.values())
    growth = after[-1]["db_kb"] - after[0]["db_kb"]
    lines.append(f"Database growth after warm-up: {growth:.0f} KB (job rows are kept for the dashboard; "
                 f"{requests_after} answers in the whole run)")
    lines.append("")
    lines.append("Answers: " + json.dumps({f"{what} {status}": n for (what, status), n in sorted(
        load.statuses.items(), key=lambda item: str(item[0]))}))
    lines.append("Connection errors: " + (json.dumps(dict(load.errors)) if load.errors else "none"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--slow-clients", type=int, default=2)
    parser.add_argument("--sample-s", type=float, default=10)
    args = parser.parse_args(argv)
    samples, load = run(args.minutes, args.clients, args.slow_clients, args.sample_s)
    print(_report(samples, load))
    return 1 if server_errors(load) or load.errors else 0


if __name__ == "__main__":
    sys.exit(main())
