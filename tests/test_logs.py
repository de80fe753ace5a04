"""API keys passed as ?api_key= never reach the logs."""

import logging


def test_api_keys_in_request_lines_are_redacted(app, caplog):
    key = "isk_" + "ab" * 32
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        # The shape of the development server's access log line.
        logging.getLogger("werkzeug").info(
            '%s - - "%s" %s', "127.0.0.1", f"GET /api/v1/info?x=1&api_key={key}&y=2 HTTP/1.1", 200)
    assert key not in caplog.text
    assert "api_key=[redacted]&y=2" in caplog.text
