"""API keys passed as ?api_key= never reach the logs; LOG_FORMAT=json writes one JSON object per line."""

import io
import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest


def test_api_keys_in_request_lines_are_redacted(app, caplog):
    key = "isk_" + "ab" * 32
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        # The shape of the development server's access log line.
        logging.getLogger("werkzeug").info(
            '%s - - "%s" %s', "127.0.0.1", f"GET /api/v1/info?x=1&api_key={key}&y=2 HTTP/1.1", 200)
    assert key not in caplog.text
    assert "api_key=[redacted]&y=2" in caplog.text


# -- every logger of the app, and no forged lines (issue 14, finding 11) ------------------

KEY = "isk_" + "cd" * 32
FORGED = "2026-12-01 10:00:00,000 WARNING imgsmaller.dashboard: Log-in throttled for 6.6.6.6 (retry in 900s)"


def lines_starting_with(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_line_break_in_a_path_cannot_forge_a_log_line(client, caplog):
    with caplog.at_level(logging.INFO):
        response = client.get("/result/abc%0a" + FORGED.replace(" ", "%20") + "%0d%1b[2K")
    assert response.status_code == 404
    assert "Log-in throttled for 6.6.6.6" in caplog.text  # logged, but inside the one real line
    assert lines_starting_with(caplog.text, "2026-12-01") == []
    assert all("\n" not in r.getMessage() and "\r" not in r.getMessage() and "\x1b" not in r.getMessage()
               for r in caplog.records)
    assert "abc\\n2026-12-01" in caplog.text and "\\r\\x1b[2K" in caplog.text


@pytest.mark.parametrize("name", ["imgsmaller.fetch", "imgsmaller.jobs", "imgsmaller.a_module_added_later.child"])
def test_every_logger_of_the_app_is_redacted_and_escaped(app, caplog, name):
    with caplog.at_level(logging.INFO):
        logging.getLogger(name).info("file_url %s failed: %s", f"https://cdn.example.com/a.png?api_key={KEY}&w=1",
                                     "bad\nWARNING forged")
        logging.getLogger(name).warning("key %s", KEY)
    assert KEY not in caplog.text
    assert "api_key=[redacted]&w=1" in caplog.text and "isk_[redacted]" in caplog.text
    assert lines_starting_with(caplog.text, "WARNING forged") == []


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record(app, caplog):
    try:
        raise ValueError(f"bad value\n{FORGED}\napi_key={KEY}")
    except ValueError:
        logging.getLogger("imgsmaller.jobs").exception("Job %s failed", 7)
    text = caplog.text
    assert "Traceback" in text and "ValueError: bad value" in text
    assert lines_starting_with(text, "2026-12-01") == []
    assert KEY not in text


def test_messages_without_control_characters_are_unchanged(app, caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("imgsmaller.jobs").info("Job %s done: %s -> %s bytes", 3, "webp", 51_200)
    assert caplog.records[-1].getMessage() == "Job 3 done: webp -> 51200 bytes"


def test_warnings_still_reach_stderr_when_no_logging_is_configured(app, monkeypatch, capsys):
    # The sanitising handler on "imgsmaller" must not swallow what logging's last resort prints.
    monkeypatch.setattr(logging.root, "handlers", [])
    logging.getLogger("imgsmaller.storage").warning("Cannot remove %s", "/srv/x\nforged")
    logging.getLogger("imgsmaller.storage").info("not shown: below the last resort's level")
    assert capsys.readouterr().err == "Cannot remove /srv/x\\nforged\n"


# -- LOG_FORMAT=json: one JSON object per line, the access line included -------------------


def json_records(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_request_id_and_never_the_key(client, user):
    from imgsmaller.logs import JsonLines

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not `root.level =`: it clears the loggers' cached isEnabledFor
    try:
        client.get(f"/api/v1/info?api_key={user['key']}&x=%0a1", headers={"X-Request-ID": "lb-42"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = stream.getvalue()
    assert user["key"] not in text
    assert len(text.splitlines()) == len(json_records(text)) >= 1
    access = [r for r in json_records(text) if r["logger"] == "imgsmaller.access"]
    assert len(access) == 1
    record = access[0]
    assert set(record) == {"time", "level", "logger", "message", "request_id",
                           "method", "path", "status", "duration_ms"}
    assert record["request_id"] == "lb-42" and record["level"] == "INFO" and record["time"].endswith("Z")
    assert record["method"] == "GET" and record["status"] == 200
    assert record["path"] == "/api/v1/info?api_key=[redacted]&x=%0a1"
    assert record["message"].startswith("GET /api/v1/info?api_key=[redacted]")


def test_app_py_writes_json_lines_when_log_format_is_json(tmp_path):
    key = "isk_" + "ef" * 32
    env = {**os.environ, "IMGSMALLER_LOG_FORMAT": "json", "IMGSMALLER_DATABASE": str(tmp_path / "db.sqlite3"),
           "IMGSMALLER_STORAGE_DIR": str(tmp_path / "storage"), "IMGSMALLER_SECRET_KEY": "s"}
    code = (f"import app; app.app.test_client().get('/api/v1/info?api_key={key}'); "
            "app.app.extensions['imgsmaller.jobs'].shutdown()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=pathlib.Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert key not in result.stderr
    records = json_records(result.stderr)
    assert records and len(records) == len(result.stderr.splitlines()), result.stderr
    assert any(r["logger"] == "imgsmaller.access" and r["status"] == 401 for r in records)


def test_the_text_format_writes_what_logging_formatter_writes_across_seconds_and_days():
    from imgsmaller.logs import TEXT_FORMAT, TextLines, use_format

    ours, stdlib = TextLines(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    record = logging.LogRecord("imgsmaller.access", logging.INFO, __file__, 1, "GET /x 200 %.1f ms", (1.25,), None)
    record.request_id = "abc"
    for created in (1_764_547_199.9991, 1_764_547_200.0004, 1_764_547_200.5, 1_780_000_000.123, 1_764_547_200.9):
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == stdlib.format(record)
    assert TextLines(TEXT_FORMAT, datefmt="%H").format(record) == logging.Formatter(TEXT_FORMAT, "%H").format(record)
    logger = logging.Logger("only-for-this-test")
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    use_format("text", logger)
    assert isinstance(logger.handlers[0].formatter, TextLines)


def test_plain_lines_pass_the_escape_unchanged_and_others_are_still_escaped():
    from imgsmaller.logs import escape_control

    assert escape_control("GET /api/v1/info 200 1.2 ms") == "GET /api/v1/info 200 1.2 ms"
    assert escape_control("a\nb\x1b[31m\u2028\x7f\x9fé") == "a\\nb\\x1b[31m\\u2028\\x7f\\x9fé"
    assert escape_control("\x1b[31mred\x1b[0m\n", keep_sgr=True) == "\x1b[31mred\x1b[0m\\n"


def test_waitress_queue_warnings_pass_once_per_interval_and_say_how_many_were_held(app, caplog):
    from imgsmaller.logs import OncePerInterval
    queue = logging.getLogger("waitress.queue")
    [limit] = [f for f in queue.filters if isinstance(f, OncePerInterval)]   # create_app put it there
    now = [1000.0]
    limit.clock, limit.next_at, limit.held = (lambda: now[0]), None, 0
    with caplog.at_level(logging.WARNING, logger="waitress.queue"):
        for depth in range(1, 6):
            queue.warning("Task queue depth is %d", depth)
            now[0] += 1
        now[0] += limit.seconds
        queue.warning("Task queue depth is %d", 9)
    lines = [r.getMessage() for r in caplog.records if r.name == "waitress.queue"]
    assert lines == ["Task queue depth is 1", f"Task queue depth is 9 (4 more held back in {limit.seconds:g} s)"]


def test_the_interval_limit_is_added_once_however_many_apps_are_made(app):
    from imgsmaller import create_app
    from imgsmaller.logs import OncePerInterval
    create_app({"TESTING": True, "DATABASE": app.config["DATABASE"], "SECRET_KEY": "x" * 32})
    assert sum(isinstance(f, OncePerInterval) for f in logging.getLogger("waitress.queue").filters) == 1
