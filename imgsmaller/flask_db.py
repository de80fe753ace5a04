"""The request's database connection (opened on first use, closed at teardown) and `flask init-db`.

On PostgreSQL, closing gives the connection back to the process's pool."""

import click
from flask import current_app, g
from flask.cli import with_appcontext

from .db import connect, database_of, describe, init_db


def get_db():
    if "db" not in g:
        g.db = connect(database_of(current_app.config))
    return g.db


def close_db(exception=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


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
