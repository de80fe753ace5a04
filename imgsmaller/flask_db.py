"""The request's database connection (opened on first use, closed at teardown) and `flask init-db`."""

import click
from flask import current_app, g
from flask.cli import with_appcontext

from .db import connect, init_db


def get_db():
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(exception=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the database, or upgrade its schema. Never destroys data."""
    path = current_app.config["DATABASE"]
    init_db(path)
    click.echo(f"Initialized the database at {path}.")


def init_app(app):
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)
