"""The request's database connection (opened on first use, given back at teardown) and `flask init-db`.

On PostgreSQL, closing gives the connection back to the process's pool. On SQLite each
request thread keeps its last connection for its next request to the same app and
database (opening one and its PRAGMAs was most of a GET /api/v1/info's own time:
~0.9 of 1.9 ms CPU, issue 11); only a connection with no transaction left open is
kept, and a thread keeps one: another app or database closes it."""

import threading
import weakref

import click
from flask import current_app, g
from flask.cli import with_appcontext

from .db import connect, database_of, describe, init_db, is_postgres

_kept = threading.local()   # .sqlite = (weakref to the app, database path, connection)


def get_db():
    if "db" not in g:
        target = database_of(current_app.config)
        g.db = _reused(target) or connect(target)
    return g.db


def close_db(exception=None):
    db = g.pop("db", None)
    if db is None:
        return
    if getattr(db, "dialect_name", None) == "sqlite" and not db.in_transaction:
        old = getattr(_kept, "sqlite", None)
        if old is not None and old[2] is not db:
            old[2].close()
        _kept.sqlite = (weakref.ref(current_app._get_current_object()), database_of(current_app.config), db)
    else:
        db.close()


def _reused(target):
    """This thread's kept connection when it is this app's to `target`; any other kept one is closed."""
    kept = getattr(_kept, "sqlite", None)
    if kept is None or is_postgres(target):
        return None
    _kept.sqlite = None
    app, path, db = kept
    if app() is current_app._get_current_object() and path == target:
        return db
    db.close()
    return None


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the database, or upgrade its schema. Never destroys data."""
    target = database_of(current_app.config)
    init_db(target)  # on PostgreSQL under an advisory lock: safe from several hosts at once
    click.echo(f"Initialized the database at {describe(target)}.")


def init_app(app):
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)
