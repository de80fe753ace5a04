"""WSGI entry point: `flask --app app run` or `waitress-serve app:app`."""

import logging
import sys

from imgsmaller import create_app
from imgsmaller.request_id import install_log_records
from imgsmaller.settings import SettingsError

install_log_records()  # every record gets `request_id` ("-" outside a request)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

try:
    app = create_app()
except SettingsError as error:
    sys.exit(f"imgsmaller: cannot start: {error}")
