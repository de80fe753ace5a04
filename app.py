"""WSGI entry point: `flask --app app run` or `waitress-serve app:app`."""

import logging
import sys

from imgsmaller import create_app
from imgsmaller.logs import TEXT_FORMAT, use_format
from imgsmaller.request_id import install_log_records
from imgsmaller.settings import SettingsError

install_log_records()  # every record gets `request_id` ("-" outside a request)
logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)

try:
    app = create_app()
except SettingsError as error:
    sys.exit(f"imgsmaller: cannot start: {error}")
use_format(app.config["LOG_FORMAT"])  # LOG_FORMAT=json: one JSON object per line from here on
