"""The web pages: one blueprint per concern, registered by `init_app`.

auth (sign-up, log-in, log-out) · dashboard (key, Allowed Domain, usage, recent jobs)
· compressor (the page at `/` and the JSON endpoints its script calls) · docs (`/docs`).
App-wide CSRF, cookie and header security is set up by `web_security`, from create_app.
"""

from . import auth, compressor, dashboard, docs
from .pages import format_filesize, template_globals

BLUEPRINTS = (auth.bp, dashboard.bp, compressor.bp, docs.bp)


def init_app(app):
    app.context_processor(template_globals)
    app.add_template_filter(format_filesize, "filesize")
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
