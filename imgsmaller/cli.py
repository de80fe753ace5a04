"""The `flask` commands that outside scripts drive: accounts, passwords, keys, domains, limits, cleanup,
backup, copy-to-postgres.

User mistakes raise click.ClickException: one line on stderr and a non-zero exit.
A new or rotated key is printed alone on the last line of stdout.
"""

import contextlib
import functools
import os
import sqlite3
import tempfile

import click
from flask import current_app
from flask.cli import with_appcontext

from . import accounts, idempotency, job_store, quota, webhooks
from .db import (
    DatabaseStartupError,
    connect,
    connect_unpooled,
    copy_rows,
    database_of,
    describe,
    init_db,
    is_postgres,
    transaction,
    utcnow,
)
from .errors import ServiceError
from .maintenance import expire_results
from .pool import current_runner


def open_db():
    """A connection for one command, closed when the `with` block ends."""
    return contextlib.closing(connect(database_of(current_app.config)))


def user_mistakes(command):
    """Turn our public errors into one-line ClickExceptions."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ServiceError as error:
            raise click.ClickException(error.message) from None

    return wrapper


@click.command("create-user")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt="Password", prompt_required=False, hide_input=True, confirmation_prompt=True,
              help="Password for the web pages; --password alone asks for it, hidden (omit: an API-only account).")
@click.option("--allowed-domain", help="Domain that file_url may fetch from (and its subdomains).")
@click.option("--daily-limit", type=click.IntRange(min=0), help="This account's own daily limit.")
@user_mistakes
def create_user_command(email, password, allowed_domain, daily_limit):
    """Create an account and print its API key (last line)."""
    with open_db() as db:
        user_id, key = accounts.create_user(
            db, email, password=password, allowed_domain=allowed_domain, daily_limit=daily_limit
        )
    click.echo(f"Created account {user_id} for {email}. Its API key (shown only now):")
    click.echo(key)


@click.command("set-password")
@with_appcontext
@click.argument("email")
@click.option("--password", prompt="New password", hide_input=True, confirmation_prompt=True,
              help="The new password (for scripts); without it the command asks twice, hidden.")
@user_mistakes
def set_password_command(email, password):
    """Set the account's web password (so it can log in); its sessions are logged out."""
    with open_db() as db:
        user = accounts.require_user_by_email(db, email)
        accounts.set_password(db, user["id"], password)
    click.echo(f"Password set for {user['email']}; its web sessions are logged out.")


@click.command("rotate-key")
@with_appcontext
@click.argument("email")
@user_mistakes
def rotate_key_command(email):
    """Give the account a new API key; the old one stops working at once."""
    with open_db() as db:
        user = accounts.require_user_by_email(db, email)
        key = accounts.rotate_api_key(db, user["id"])
    click.echo(f"New API key for {user['email']} (the old one no longer works):")
    click.echo(key)


@click.command("set-domain")
@with_appcontext
@click.argument("email")
@click.argument("domain", required=False)
@click.option("--clear", is_flag=True, help="Unset the Allowed Domain.")
@user_mistakes
def set_domain_command(email, domain, clear):
    """Set (or --clear) the account's Allowed Domain for file_url."""
    if clear == bool(domain):
        raise click.ClickException("Give a DOMAIN or --clear, not both or neither.")
    with open_db() as db:
        user = accounts.require_user_by_email(db, email)
        accounts.set_allowed_domain(db, user["id"], None if clear else domain)
        value = accounts.get_user(db, user["id"])["allowed_domain"]
    click.echo(f"Allowed domain for {user['email']}: {value or '(none)'}")


@click.command("set-limit")
@with_appcontext
@click.argument("email")
@click.argument("limit", type=click.IntRange(min=0))
@user_mistakes
def set_limit_command(email, limit):
    """Set the account's own daily limit."""
    with open_db() as db:
        user = accounts.require_user_by_email(db, email)
        accounts.set_daily_limit(db, user["id"], limit)
    click.echo(f"Daily limit for {user['email']}: {limit}")


@click.command("cleanup")
@with_appcontext
def cleanup_command():
    """Delete expired results and their inputs now."""
    with open_db() as db:
        count = expire_results(db, current_runner(current_app).storage, utcnow())
    click.echo(f"Deleted the files of {count} expired job(s).")


@click.command("backup")
@with_appcontext
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def backup_command(path, force):
    """Copy the database to PATH while the service runs (SQLite's online backup: one consistent snapshot)."""
    if current_app.config["DATABASE_URL"]:
        raise click.ClickException("backup copies the SQLite database; DATABASE_URL is PostgreSQL: back it up with"
                                   " pg_dump (see the README's \"PostgreSQL\" section).")
    if os.path.exists(path) and not force:
        raise click.ClickException(f"{path} exists; pass --force to replace it.")
    try:
        # Written beside PATH under a temp name and renamed: PATH is never half a database.
        fd, temp_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".imgsmaller-backup-")
    except OSError as error:
        raise click.ClickException(f"Cannot write beside {path}: {error.strerror}.") from None
    os.close(fd)
    try:
        with open_db() as source, contextlib.closing(sqlite3.connect(temp_path)) as target:
            source.backup(target)  # all pages in one step: one read transaction; writers carry on (WAL)
            if target.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise click.ClickException("The copy failed its integrity check; nothing was written.")
        if force:
            os.replace(temp_path, path)
        else:
            os.link(temp_path, path)  # fails if PATH appeared meanwhile: never overwrite without --force
    except FileExistsError:
        raise click.ClickException(f"{path} exists; pass --force to replace it.") from None
    except OSError as error:
        raise click.ClickException(f"Cannot write {path}: {error.strerror}.") from None
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)
    click.echo(f"Backed up the database to {path} ({os.path.getsize(path)} bytes).")


@click.command("copy-to-postgres")
@with_appcontext
@click.argument("url")
def copy_to_postgres_command(url):
    """Copy this install's SQLite database (accounts, usage, jobs, webhooks) into an empty PostgreSQL one at URL."""
    if current_app.config["DATABASE_URL"]:
        raise click.ClickException("Run this with the SQLite settings (DATABASE_URL unset): it copies DATABASE.")
    if not is_postgres(url):
        raise click.ClickException("URL must be like postgresql://user@host:5432/dbname.")
    try:
        init_db(url)
    except DatabaseStartupError as error:
        raise click.ClickException(str(error)) from None
    with open_db() as source, contextlib.closing(connect_unpooled(url)) as target:
        if accounts.all_users(target) or job_store.all_jobs(target):
            raise click.ClickException(f"{describe(url)} already has accounts or jobs; copy into an empty database.")
        with transaction(target):  # all or nothing
            counts = [copy_rows(target, "users", accounts.all_users(source)),
                      copy_rows(target, "usage", quota.all_usage(source)),
                      copy_rows(target, "jobs", job_store.all_jobs(source)),
                      copy_rows(target, "idempotency_keys", idempotency.all_keys(source)),
                      copy_rows(target, "webhook_deliveries", webhooks.all_deliveries(source))]
    click.echo("Copied {} account(s), {} day(s) of usage and {} job(s) (and {} Idempotency-Key(s)) to {},"
               " with {} webhook delivery(ies). Set DATABASE_URL to use it.".format(*counts[:4], describe(url),
                                                                                  counts[4]))


def init_app(app):
    for command in (create_user_command, set_password_command, rotate_key_command, set_domain_command,
                    set_limit_command, cleanup_command, backup_command, copy_to_postgres_command):
        app.cli.add_command(command)
