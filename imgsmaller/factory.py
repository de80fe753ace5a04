"""`create_app`: settings first, then each part's `init_app`, then the blueprints."""

import os

from flask import Flask

from . import api, auth, cli, dashboard, db, errors, jobs, logs, serve
from .settings import load_settings, read_config_file

# Room for multipart framing and JSON/base64 overhead (4/3) above UPLOAD_MAX_MB;
# the decoded image itself is checked against the exact limit.
BODY_OVERHEAD_BYTES = 64 * 1024


def create_app(test_config=None):
    """Build the app. Settings are read here, once: `test_config` replaces config.py and the environment."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    if test_config is None:
        file_values = read_config_file(os.path.join(app.instance_path, "config.py"))
        settings = load_settings(app.instance_path, file_values, os.environ)
    else:
        settings = load_settings(app.instance_path, test_config, {})
        app.config.update({k: v for k, v in test_config.items() if k not in settings})
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = int(settings["UPLOAD_MAX_MB"] * 1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.json.sort_keys = False

    os.makedirs(os.path.dirname(os.path.abspath(settings["DATABASE"])), exist_ok=True)
    db.init_db(settings["DATABASE"])  # the database is created (or upgraded) on first start

    # TRUSTED_PROXIES is applied by waitress (serve.py), not by a ProxyFix here as well.
    logs.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    auth.init_app(app)
    cli.init_app(app)
    app.register_blueprint(api.bp)
    dashboard.init_app(app)
    jobs.init_app(app)
    serve.init_app(app)
    return app
