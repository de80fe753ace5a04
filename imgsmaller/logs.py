"""Keeps secrets out of logs: API keys passed as ?api_key= are redacted from every log line."""

import logging
import re

_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)


class RedactApiKeys(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        if "api_key=" in message.lower():
            record.msg, record.args = _API_KEY_IN_URL.sub(r"\1[redacted]", message), None
        return True


def init_app(app):
    # Werkzeug's development server logs each request line, query string included.
    for name in ("werkzeug", "waitress", app.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKeys) for f in logger.filters):
            logger.addFilter(RedactApiKeys())
