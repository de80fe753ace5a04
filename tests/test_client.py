"""The batch client (imgsmaller/client.py) against a real waitress server on loopback.

The client runs as a subprocess, as a user runs it: `python -m imgsmaller.client ...`,
and once copied alone into an empty folder. Retries and `--wait` are checked in-process
against a small scripted HTTP server, which can answer what the real one never does.
"""

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from PIL import Image

from imgsmaller import accounts, client
from imgsmaller.db import connect

from helpers import BIN, ROOT, AppProcess, answers, free_port
from images import encode, image_bytes

CLIENT = os.path.join(ROOT, "imgsmaller", "client.py")


class Server(AppProcess):
    """waitress-serve app:app on a free loopback port, with its own database and storage."""

    def __init__(self, folder):
        super().__init__(folder, secret="client-test", WORKERS=2)
        self.url = f"http://127.0.0.1:{free_port()}"

    def start(self):
        return self.launch([os.path.join(BIN, "waitress-serve"), "--listen", self.url.removeprefix("http://"),
                            "app:app"], lambda: answers(self.url), timeout=30)

    def create_user(self, **options):
        """A new account's API key (one server serves every test; each test has its own account)."""
        db = connect(self.database)
        try:
            return accounts.create_user(db, f"client{os.urandom(4).hex()}@example.org", **options)[1]
        finally:
            db.close()

    def remaining(self, key):
        return requests.get(self.url + "/api/v1/info", headers={"X-API-Key": key}, timeout=10).json()["remaining_today"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


def client_command(*args, module=True):
    return [sys.executable, "-m", "imgsmaller.client", *args] if module else [sys.executable, CLIENT, *args]


def client_env(server, key, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSMALLER_")}
    return {**env, "PYTHONPATH": ROOT, "IMGSMALLER_URL": server.url, "IMGSMALLER_API_KEY": key, **extra}


def run_client(server, key, *args, cwd):
    return subprocess.run(client_command(*args), cwd=cwd, env=client_env(server, key),
                          capture_output=True, text=True, timeout=120)


def table_row(stdout, label):
    """The numbers of one row of the closing table, e.g. ['18', '55.1 KB', ...]."""
    line = next(line for line in stdout.splitlines() if line.startswith(label + " "))
    return line[len(label):].split()


def state_entries(out):
    """The client's state file replayed: {source: entry} (later lines win)."""
    entries = {}
    path = out / client.STATE_NAME
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        source = record.pop("source")
        if record.get("forget"):
            entries.pop(source, None)
        else:
            entries.setdefault(source, {}).update(record)
    return entries


def write_photos(folder, names):
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(os.path.splitext(name)[1].lstrip("."), 32, 24, seed=i))


def test_a_folder_is_compressed_into_the_same_paths_with_failures_reported(server, tmp_path):
    key = server.create_user()
    photos = tmp_path / "photos"
    good = ([f"p{i}.png" for i in range(6)] + [f"trip/j{i}.jpg" for i in range(6)]
            + [f"trip/day2/w{i}.webp" for i in range(6)])
    write_photos(photos, good)
    (photos / "trip" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)  # 422 at submit
    # 16 pixels high and pure noise: no WebP of 1KB exists, so the job itself fails.
    noise = np.random.default_rng(1).integers(0, 256, (16, 3000, 3), dtype=np.uint8)
    (photos / "wide.png").write_bytes(encode(Image.fromarray(noise, "RGB"), "png"))
    (photos / "trip" / "notes.txt").write_text("not an image")

    result = run_client(server, key, "compress", "--target", "1KB", "--output", "webp", "--out", "small",
                        "--jobs", "4", "photos", cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    out = tmp_path / "small"
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert made == sorted(name.rsplit(".", 1)[0] + ".webp" for name in good)
    for name in made:
        data = (out / name).read_bytes()
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) <= 1024
    assert table_row(result.stdout, "compressed")[0] == "18"
    assert table_row(result.stdout, "failed") == ["2"]
    assert table_row(result.stdout, "skipped")[0] == "1"
    assert "trip/broken.png: HTTP 422: " in result.stdout
    assert "wide.png: The target size of 1024 bytes cannot be reached" in result.stdout
    assert "[20/20]" in result.stderr  # plain lines, not a bar, when stderr is not a terminal
    assert server.remaining(key) == 100 - 19  # the refused file cost nothing; the failed job one

    again = run_client(server, key, "compress", "--target", "1KB", "--output", "webp", "--out", "small",
                       "photos", cwd=tmp_path)

    assert again.returncode == 1  # the two failures are still failures
    assert table_row(again.stdout, "done earlier")[0] == "18"
    assert table_row(again.stdout, "compressed")[0] == "0"
    assert "wide.png: The target size of 1024 bytes cannot be reached" in again.stdout
    assert server.remaining(key) == 100 - 19


def test_an_interrupted_run_resumes_without_spending_quota_twice(server, tmp_path):
    key = server.create_user()
    names = [f"album/{i:02d}.png" for i in range(10)]  # results go to out/00.webp ...
    write_photos(tmp_path, names)
    out = tmp_path / "out"
    command = client_command("compress", "--output", "webp", "--out", "out", "--jobs", "1", "album")
    process = subprocess.Popen(command, cwd=tmp_path, env=client_env(server, key),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # With one job in flight, a state showing a job queued but not done means the client is
        # polling it, not waiting for a 202 it has yet to record: frozen (SIGSTOP) there, a
        # SIGKILL loses nothing, so the assertions below cannot depend on timing.
        while True:
            assert process.poll() is None, "the client finished before it could be interrupted"
            statuses = [e.get("status") for e in state_entries(out).values()]
            if statuses.count("done") >= 2 and "queued" in statuses:
                process.send_signal(signal.SIGSTOP)
                statuses = [e.get("status") for e in state_entries(out).values()]
                if statuses.count("done") >= 2 and "queued" in statuses:
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait(10)
    done_before = statuses.count("done")
    assert done_before < len(names)

    result = run_client(server, key, "compress", "--output", "webp", "--out", "out", "album", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in out.glob("*.webp")) == [f"{i:02d}.webp" for i in range(10)]
    assert table_row(result.stdout, "done earlier")[0] == str(done_before)
    assert table_row(result.stdout, "total")[0] == "10"
    assert server.remaining(key) == 100 - 10  # the queued job was polled again, not sent again
    assert {e["status"] for e in state_entries(out).values()} == {"done"}


def test_ctrl_c_stops_at_once_and_says_how_to_resume(server, tmp_path):
    key = server.create_user()
    write_photos(tmp_path, [f"in/{i}.png" for i in range(10)])
    # A person's Ctrl-C reaches a client whose SIGINT is not ignored; a suite started in the background of a
    # non-interactive shell inherits SIG_IGN, so the client starts with the default disposition.
    process = subprocess.Popen(client_command("compress", "--out", "out", "--jobs", "1", "in"), cwd=tmp_path,
                               env=client_env(server, key), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while "queued" not in [e.get("status") for e in state_entries(tmp_path / "out").values()]:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr


def test_a_second_client_on_the_same_out_folder_is_refused(tmp_path):
    first = client.lock_folder(str(tmp_path))
    try:
        with pytest.raises(client.ClientError, match="another client"):
            client.lock_folder(str(tmp_path))
    finally:
        first.close()
    client.lock_folder(str(tmp_path)).close()  # free again once the first one is gone


def test_a_quota_that_runs_out_mid_batch_stops_sending_and_reports_the_rest(server, tmp_path):
    key = server.create_user(daily_limit=5)
    write_photos(tmp_path / "in", [f"{i}.jpg" for i in range(8)])
    # --max-retry-after 0: close to 00:00 UTC the 429's Retry-After is short and the client
    # would rightly wait for the new day; here the limit must stay spent.
    args = ("compress", "--out", "out", "--jobs", "1", "--max-retry-after", "0", "in")

    result = run_client(server, key, *args, cwd=tmp_path)

    assert result.returncode == 1
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 5
    assert table_row(result.stdout, "compressed")[0] == "5"
    assert table_row(result.stdout, "not done") == ["3"]
    assert result.stdout.count("HTTP 429: Daily limit of 5 requests exceeded") == 3
    assert result.stdout.count("not sent: HTTP 429") == 2  # after the first 429, no more uploads
    assert server.remaining(key) == 0

    again = run_client(server, key, *args, cwd=tmp_path)

    assert again.returncode == 1
    assert table_row(again.stdout, "done earlier")[0] == "5"
    assert table_row(again.stdout, "not done") == ["3"]


def test_info_prints_the_remaining_quota(server, tmp_path):
    key = server.create_user(daily_limit=7)
    result = run_client(server, key, "info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "remaining  7 of 7 today" in result.stdout
    as_json = run_client(server, key, "info", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["remaining_today"] == 7


@pytest.mark.parametrize("command", [["info"], ["compress", "--out", "out", "in"]])
def test_a_bad_key_prints_the_servers_message_and_fails(server, tmp_path, command):
    write_photos(tmp_path / "in", ["a.png"])
    result = run_client(server, "isk_" + "0" * 64, *command, cwd=tmp_path)
    assert result.returncode == 2
    assert "HTTP 401: Invalid API key." in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_key_is_a_usage_error(server, tmp_path):
    result = subprocess.run(client_command("info"), cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**client_env(server, ""), "IMGSMALLER_API_KEY": ""})
    assert result.returncode == 2
    assert "IMGSMALLER_API_KEY" in result.stderr


def test_the_client_imports_only_the_standard_library_and_requests():
    with open(CLIENT) as file:
        tree = ast.parse(file.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"requests"}

    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import imgsmaller.client"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert {m for m in loaded if m.split(".")[0] == "imgsmaller"} == {"imgsmaller", "imgsmaller.client"}
    assert not loaded & {"flask", "werkzeug", "PIL", "numpy", "sqlite3"}


def test_the_client_works_copied_alone_into_an_empty_folder(server, tmp_path):
    key = server.create_user()
    shutil.copy(CLIENT, tmp_path / "imgsmaller_client.py")
    write_photos(tmp_path / "in", ["a.png", "b.jpg"])
    env = client_env(server, key)
    del env["PYTHONPATH"]
    # -I: no PYTHONPATH, no user site, not even the script's folder on sys.path.
    result = subprocess.run([sys.executable, "-I", "imgsmaller_client.py", "compress", "--out", "out", "in"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["a.png", "b.jpg"]


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body) for its path."""

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.post_headers.append(dict(self.headers))
        self.answer()

    def answer(self):
        path = self.path.split("?")[0]
        self.server.seen.append(path)
        status, headers, body = self.server.script[path].pop(0)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Length": str(len(payload)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def scripted_server(script):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.script, httpd.seen, httpd.bodies, httpd.post_headers = script, [], [], []
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


INFO = {"remaining_today": 3, "limit": 3, "reset_in_seconds": 60, "supported_input": [], "supported_output": []}


@pytest.mark.parametrize("answers, code", [
    ([(503, {}, {"message": "busy"}), (502, {}, b"<html>bad gateway</html>"), (200, {}, INFO)], 0),
    ([(429, {"Retry-After": "0"}, {"message": "slow down"}), (200, {}, INFO)], 0),
    ([(500, {}, {"message": "Internal server error"})] * client.ATTEMPTS, 2),
])
def test_server_errors_are_retried_a_bounded_number_of_times(monkeypatch, capsys, answers, code):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    with scripted_server({"/api/v1/info": list(answers)}) as httpd:
        assert client.main(["info", "--server", httpd.url, "--key", "k"]) == code
    assert len(httpd.seen) == len(answers)
    if code:
        assert "HTTP 500: Internal server error" in capsys.readouterr().err


def test_an_unreachable_server_is_reported_after_the_retries(monkeypatch, capsys):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    assert client.main(["info", "--server", f"http://127.0.0.1:{free_port()}", "--key", "k"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_wait_is_sent_only_when_given_and_a_done_answer_needs_no_polling(monkeypatch, capsys, tmp_path):
    write_photos(tmp_path / "in", ["a.png"])
    result = image_bytes("webp", 32, 24)
    done = {"status": "done", "progress_key": "pk", "download": None, "bytes": len(result), "format": "webp",
            "original_bytes": (tmp_path / "in" / "a.png").stat().st_size}
    with scripted_server({"/api/v1/info": [(200, {}, INFO)], "/api/v1/compress": [(200, {}, done)],
                          "/download/1": [(200, {}, result)]}) as httpd:
        done["download"] = httpd.url + "/download/1?token=t"
        code = client.main(["compress", "--server", httpd.url, "--key", "k", "--output", "webp", "--wait", "20",
                            "--out", str(tmp_path / "out"), str(tmp_path / "in")])
    assert code == 0, capsys.readouterr()
    assert httpd.seen == ["/api/v1/info", "/api/v1/compress", "/download/1"]
    assert b'name="wait"\r\n\r\n20\r\n' in httpd.bodies[0]
    assert (tmp_path / "out" / "a.webp").read_bytes() == result


def test_without_wait_no_wait_is_sent_and_the_result_is_polled(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(client, "POLL_FIRST_S", 0.01)
    write_photos(tmp_path / "in", ["a.png"])
    result = image_bytes("png", 32, 24, seed=9)
    queued = {"queued": True, "progress_key": "pk", "result_url": "unused"}
    done = {"status": "done", "download": None, "bytes": len(result), "format": "png", "original_bytes": 1}
    with scripted_server({"/api/v1/info": [(200, {}, INFO)], "/api/v1/compress": [(202, {}, queued)],
                          "/result/pk": [(200, {}, {"status": "processing"})] * 2 + [(200, {}, done)],
                          "/download/1": [(200, {}, result)]}) as httpd:
        done["download"] = httpd.url + "/download/1?token=t"
        code = client.main(["compress", "--server", httpd.url, "--key", "k",
                            "--out", str(tmp_path / "out"), str(tmp_path / "in")])
    assert code == 0, capsys.readouterr()
    assert httpd.seen == ["/api/v1/info", "/api/v1/compress"] + ["/result/pk"] * 3 + ["/download/1"]
    assert b'name="wait"' not in httpd.bodies[0]
    assert (tmp_path / "out" / "a.png").read_bytes() == result


def test_resize_and_metadata_options_are_sent_only_when_given(monkeypatch, capsys, tmp_path):
    write_photos(tmp_path / "in", ["a.png"])
    result = image_bytes("png", 16, 12)
    done = {"status": "done", "progress_key": "pk", "download": None, "bytes": len(result), "format": "png",
            "original_bytes": (tmp_path / "in" / "a.png").stat().st_size}
    for extra in ([], ["--max-width", "800", "--max-height", "600", "--keep-metadata", "copyright"]):
        out = tmp_path / f"out{len(extra)}"
        with scripted_server({"/api/v1/info": [(200, {}, INFO)], "/api/v1/compress": [(200, {}, done)],
                              "/download/1": [(200, {}, result)]}) as httpd:
            done["download"] = httpd.url + "/download/1?token=t"
            code = client.main(["compress", "--server", httpd.url, "--key", "k", "--wait", "5", *extra,
                                "--out", str(out), str(tmp_path / "in")])
        assert code == 0, capsys.readouterr()
        body = httpd.bodies[0]
        if extra:
            for name, value in (("max_width", b"800"), ("max_height", b"600"), ("keep_metadata", b"copyright")):
                assert b'name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n" in body
            assert state_entries(out)[str(tmp_path / "in" / "a.png")]["options"]["max_width"] == 800
        else:
            assert b"max_width" not in body and b"keep_metadata" not in body
            assert set(state_entries(out)[str(tmp_path / "in" / "a.png")]["options"]) == {"target", "output"}


@pytest.mark.parametrize("bad", [["--max-width", "0"], ["--max-height", "10001"], ["--keep-metadata", "gps"]])
def test_bad_resize_and_metadata_options_are_usage_errors(capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        client.main(["compress", "--server", "http://127.0.0.1:9", "--key", "k", *bad, "x"])
    assert exit_info.value.code == 2


def test_each_compress_request_has_its_own_idempotency_key_kept_on_its_retries(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    write_photos(tmp_path / "in", ["a.png", "b.png"])
    results = [image_bytes("png", 8, 8, seed=n) for n in (1, 2)]
    done = [{"status": "done", "progress_key": f"pk{n}", "download": None, "bytes": len(results[n]),
             "format": "png", "original_bytes": 10**6} for n in (0, 1)]
    with scripted_server({"/api/v1/info": [(200, {}, INFO)],
                          "/api/v1/compress": [(503, {}, {"message": "busy"}), (200, {}, done[0]), (200, {}, done[1])],
                          "/download/1": [(200, {}, results[0])], "/download/2": [(200, {}, results[1])]}) as httpd:
        for n in (0, 1):
            done[n]["download"] = f"{httpd.url}/download/{n + 1}?token=t"
        code = client.main(["compress", "--server", httpd.url, "--key", "k", "--jobs", "1", "--wait", "5",
                            "--out", str(tmp_path / "out"), str(tmp_path / "in")])
    assert code == 0, capsys.readouterr()
    keys = [headers["Idempotency-Key"] for headers in httpd.post_headers]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # the 503's retry kept its key; the next file has its own


def test_a_download_cut_short_is_retried_and_never_left_in_place(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    write_photos(tmp_path / "in", ["a.png"])
    result = image_bytes("png", 32, 24, seed=9)
    done = {"status": "done", "progress_key": "pk", "download": None, "bytes": len(result), "format": "png"}
    short = (200, {"Content-Length": str(len(result) - 10)}, result[:-10])
    with scripted_server({"/api/v1/info": [(200, {}, INFO)], "/api/v1/compress": [(200, {}, done)],
                          "/download/1": [short] * client.ATTEMPTS}) as httpd:
        done["download"] = httpd.url + "/download/1?token=t"
        code = client.main(["compress", "--server", httpd.url, "--key", "k", "--wait", "5",
                            "--out", str(tmp_path / "out"), str(tmp_path / "in")])
    assert code == 1
    assert "download cut short" in capsys.readouterr().out
    assert httpd.seen.count("/download/1") == client.ATTEMPTS
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == []


def test_the_state_file_ignores_a_torn_last_line(tmp_path):
    (tmp_path / client.STATE_NAME).write_text(
        json.dumps({"source": "/a.png", "status": "queued", "progress_key": "k1"}) + "\n"
        + json.dumps({"source": "/a.png", "status": "done"}) + "\n"
        + '{"source": "/b.png", "status": "qu')
    state = client.State(str(tmp_path))
    state.load()
    assert state.entries == {"/a.png": {"status": "done", "progress_key": "k1"}}


def test_heic_photos_are_sent_and_their_original_is_written_as_jpeg(tmp_path):
    from images import heic, photo

    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(heic(photo(32, 24)))
    (folder / "notes.txt").write_text("not an image")
    items, skipped = client.collect([str(folder)], str(tmp_path / "out"), "original")
    assert [(item.format, item.dest, item.expected) for item in items] == [("heic", "IMG_0001.jpg", "jpeg")]
    assert skipped == 1
    items, _ = client.collect([str(folder)], str(tmp_path / "out"), "webp")
    assert items[0].dest == "IMG_0001.webp"
