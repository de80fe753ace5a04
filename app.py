"""WSGI entry point: `flask --app app run` or `waitress-serve app:app`."""

import logging
import sys

from imgsmaller import create_app
from imgsmaller.settings import SettingsError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

try:
    app = create_app()
except SettingsError as error:
    sys.exit(f"imgsmaller: cannot start: {error}")
