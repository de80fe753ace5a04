"""`create_app`: the whole app in one page — settings, database, job pool, security, blueprints, errors."""

import os

from flask import Flask

from . import api, cli, db, errors, flask_db, limits, logs, ops, params, pool, serve, waits, web, web_security, worker
from .errors import DatabaseUnavailableError
from .settings import SettingsError, load_settings, read_config_file

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
        settings = load_settings(app.instance_path, test_config, {}, allow_unknown=True)
        app.config.update({k: v for k, v in test_config.items() if k not in settings})
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes(settings)
    app.json = params.JSONProvider(app)  # too-deep JSON is a 422, not a RecursionError
    app.json.sort_keys = False

    # TRUSTED_PROXIES is applied by waitress itself (serve.py), which knows the connecting
    # peer, not by a ProxyFix here that would trust whoever reaches the port.
    try:
        db.init_db(db.database_of(settings))  # the database is created (or upgraded) on first start
    except (db.DatabaseStartupError, DatabaseUnavailableError) as error:
        raise SettingsError(f"{error} (setting {'DATABASE_URL' if settings['DATABASE_URL'] else 'DATABASE'})") from None
    logs.init_app(app)
    errors.init_app(app)
    flask_db.init_app(app)
    pool.init_app(app)
    waits.init_app(app)
    limits.init_app(app)
    ops.init_app(app)
    web_security.init_app(app, exempt=[api.bp])
    cli.init_app(app)
    app.register_blueprint(api.bp)
    web.init_app(app)
    serve.init_app(app)
    worker.init_app(app)
    return app


def max_request_bytes(settings):
    """The largest request body: an UPLOAD_MAX_MB image as base64 (4/3) plus framing."""
    return int(settings["UPLOAD_MAX_MB"] * 1024 * 1024 * 4 / 3) + BODY_OVERHEAD_BYTES
