"""python -m bench.info_components: CPU microseconds of each part of a GET /api/v1/info, in process.

Issue 11's breakdown. In a child process per checkout (this one, and `--base REV`'s app), the app
is built as `flask serve` builds it (app.py: SQLite on a temporary instance, the log to
/dev/null) and each part runs alone inside a real request context, thousands of times; a part's
figure is the minimum over repeats (the least disturbed by a shared machine), GC paused. The
whole request and a bare Flask JSON view are WSGI calls with the same environ, no server.

    python -m bench.info_components [--base REV] [--runs 3]
"""

import argparse
import gc
import inspect
import io
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import timeit

from bench.info_overhead import ROOT, _made, extract


def best(fn, number=3000, repeat=9):
    gc.disable()
    try:
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
    finally:
        gc.enable()


def best_over(fn, make, number=2000, repeat=9):
    """Like `best`, for a part that changes its argument (a response's headers): a fresh one per call."""
    times = []
    for _ in range(repeat):
        items = [make() for _ in range(number)]
        gc.disable()
        started = time.perf_counter()
        for item in items:
            fn(item)
        times.append(time.perf_counter() - started)
        gc.enable()
    return min(times) / number * 1e6


def measure(tmp):
    """{part: microseconds} for the app importable from the current directory."""
    os.environ.update(IMGSMALLER_DATABASE=f"{tmp}/db.sqlite3", IMGSMALLER_STORAGE_DIR=f"{tmp}/storage",
                      IMGSMALLER_WORKERS="1")
    sys.path.insert(0, os.getcwd())
    from flask import Flask, request

    import app as app_module
    from imgsmaller import accounts, api, auth, flask_db, ops, web_security
    from imgsmaller import db as database
    from imgsmaller.db import utcnow
    from imgsmaller.request_id import RequestIdMiddleware

    app = app_module.app
    for handler in logging.getLogger().handlers:
        if hasattr(handler, "setStream"):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 (for the process's life)
    db = database.connect(f"{tmp}/db.sqlite3")
    _, key = accounts.create_user(db, "bench@example.org")
    db.close()
    bare = Flask("bare")
    bare.get("/api/v1/info")(lambda: {"endpoint": "http://127.0.0.1/api/v1/compress", "limit": 500})
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/api/v1/info", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "HTTP_HOST": "127.0.0.1:8080",
               "HTTP_X_API_KEY": key, "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.errors": sys.stderr,
               "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}

    def fresh_environ():
        return {**environ, "wsgi.input": io.BytesIO(b"")}

    def call(target):
        body = target(fresh_environ(), lambda status, headers, exc_info=None: None)
        b"".join(body)
        body.close()

    for _ in range(300):
        call(app), call(bare)
    parts = {"whole request (WSGI call)": best(lambda: call(app), 1000, 15),
             "bare Flask view (WSGI call)": best(lambda: call(bare), 1000, 15)}
    with app.request_context(fresh_environ()):
        app.preprocess_request()
        db = flask_db.get_db()
        if hasattr(auth, "authenticate_with_quota"):
            def lookup():
                return auth.authenticate_with_quota(db, request, 100, utcnow())
        else:
            def lookup():
                user = auth.authenticate(db, request)
                return user, api.current_quota(db, user)
        user, quota = lookup()
        parts["key lookup + quota read"] = best(lookup)
        parts["info view body (JSON response)"] = best(lambda: api.get_info.__wrapped__(user, quota))

        def response():
            return app.make_response({"a": 1})
        parts["rate-limit headers"] = best_over(lambda r: auth.add_rate_limit_headers(r, quota), response)
        parts["security headers"] = best_over(web_security.add_security_headers, response)
        metrics = app.extensions["imgsmaller.metrics"]
        parts["metrics"] = best(lambda: metrics.observe_request("GET", "/api/v1/info", 200, 0.001))
        if len(inspect.signature(ops.log_access).parameters) == 4:
            req = request._get_current_object()
            parts["access log line"] = best(lambda: ops.log_access(req, "/api/v1/info", 200, 0.0012))
        else:
            parts["access log line"] = best(lambda: ops.log_access("/api/v1/info", 200, 0.0012))
        hooks = {hook.__name__: hook for hook in app.before_request_funcs[None]}
        parts["CSRF hook (GET)"] = best(hooks["csrf_protect"])
        parts["job-pool and timer hooks"] = best(lambda: (hooks["start_job_runner"](), hooks["start_timer"]()))
        sessions, saved_into = app.session_interface, response()
        parts["session open + save"] = best(
            lambda: sessions.save_session(app, sessions.open_session(app, request), saved_into))

    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b""]

    wrapped = RequestIdMiddleware(inner)
    parts["request id middleware"] = (best(lambda: wrapped({}, lambda *a: None), 10000)
                                      - best(lambda: inner({}, lambda *a: None), 10000))
    return parts


def run(code, runs):
    """{part: min over `runs` child processes} for the checkout at `code`."""
    found = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
            out = subprocess.run([sys.executable, "-m", "bench.info_components", "--child", tmp], cwd=code,
                                 env=dict(os.environ, PYTHONPATH=f"{code}{os.pathsep}{ROOT}"),
                                 capture_output=True, text=True, check=True).stdout
        for part, value in json.loads(out.strip().splitlines()[-1]).items():
            found[part] = min(found.get(part, value), value)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.info_components", description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="also measure the app of this git revision")
    parser.add_argument("--runs", type=int, default=3, help="child processes per checkout (the minimum is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child)))
        sys.stdout.flush()
        os._exit(0)  # the job pool's threads need no goodbye
    with tempfile.TemporaryDirectory(prefix="bench-parts-base-") as tmp:
        columns = [("this checkout", run(ROOT, args.runs))]
        if args.base:
            columns.insert(0, (f"app at {args.base}", run(extract(args.base, _made(pathlib.Path(tmp))), args.runs)))
    print("| part | " + " | ".join(f"{name} µs" for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for part in columns[-1][1]:
        print(f"| {part} | " + " | ".join(f"{values.get(part, float('nan')):.1f}" for _, values in columns) + " |")


if __name__ == "__main__":
    main()
