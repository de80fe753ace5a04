"""`flask --app app serve`: the production server, waitress with its options derived from the settings.

Owns the mapping from settings to waitress options (`waitress_options`; the README's plain
`waitress-serve` flags are the same, printed by `serve --print-command` and held equal by a
test), the JSON body of the errors waitress answers by itself, and which X-Forwarded-For
hops reach waitress's parser. Imports waitress, click, Flask, `errors` and `worker`'s signal
handling; of the app's other parts it only starts and stops the job pool.

Forwarded headers are handled by waitress alone, not by Werkzeug's ProxyFix as well: only
waitress knows which peer connected, so it can trust X-Forwarded-For/-Proto from the proxy's
address (TRUSTED_PROXY_ADDRESS) and drop them from anyone else, where ProxyFix would trust
whoever reaches the port. Both at once would apply the hops twice, and waitress without
`trusted_proxy` removes the headers before the app sees them (every client then looks
like the proxy, and one address's failed log-ins throttle everyone).
"""

import json
import logging
import shlex

import click
from flask import request
from flask.cli import pass_script_info

from .errors import PayloadTooLargeError
from .settings import SETTINGS
from .worker import stop_on_signals

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Request threads only: compression runs in the job pool's WORKERS slots. A request holds a
# thread while it probes an upload or fetches a file_url (up to FETCH_TIMEOUT_S); 8 is the
# README's production value since v1, so a few slow fetches leave threads to answer others.
DEFAULT_THREADS = 8
# waitress stops accepting once this many connections are open (its default, 100, was
# filled by 100-200 idle sockets, and then the server answered nothing for minutes).
# Idle connections cost no thread, only a descriptor: 1000 is cheap (see OPEN_FILES_PER_CONNECTION).
DEFAULT_CONNECTION_LIMIT = 1000
# Seconds a connection may stay silent before waitress closes it (waitress: 120). Any real
# client sends or reads something within 30 s; the check runs every `cleanup_interval`.
DEFAULT_CHANNEL_TIMEOUT_S = 30
CLEANUP_INTERVAL_S = 10
# waitress: "each channel consumes at least one file descriptor ... potentially up to three"
# (request and response bodies spooled to temporary files).
OPEN_FILES_PER_CONNECTION = 3
OPEN_FILES_SPARE = 256  # the database, logs, the job pool's files
TRUSTED_PROXY_HEADERS = ("x-forwarded-for", "x-forwarded-proto")


def waitress_options(config, *, host=DEFAULT_HOST, port=DEFAULT_PORT, threads=DEFAULT_THREADS, trusted_proxy=None,
                     connection_limit=DEFAULT_CONNECTION_LIMIT, channel_timeout=DEFAULT_CHANNEL_TIMEOUT_S):
    """The keyword arguments for `waitress.create_server`, from the app's config and the command's options."""
    options = {
        "listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "threads": threads,
        "connection_limit": connection_limit,
        "channel_timeout": channel_timeout,
        "cleanup_interval": min(CLEANUP_INTERVAL_S, channel_timeout),
        # waitress refuses a body whose length is >= this as soon as the headers arrive (and a
        # chunked one as soon as it grows that big), before spooling it to disk; its own default
        # is 1 GB per connection. The app's MAX_CONTENT_LENGTH (UPLOAD_MAX_MB with base64's 4/3
        # and multipart framing) is the largest body it can accept, so exactly that still passes.
        "max_request_body_size": config["MAX_CONTENT_LENGTH"] + 1,
        "clear_untrusted_proxy_headers": True,
    }
    if config["TRUSTED_PROXIES"]:
        options.update(
            trusted_proxy=trusted_proxy or config["TRUSTED_PROXY_ADDRESS"],
            trusted_proxy_count=config["TRUSTED_PROXIES"],
            # Not X-Forwarded-Host/-Port: the README's nginx sets Host itself and passes a
            # client's X-Forwarded-Host through unchanged.
            trusted_proxy_headers=set(TRUSTED_PROXY_HEADERS),
        )
    return options


def waitress_serve_command(options, app_spec="app:app"):
    """The plain `waitress-serve` command line that starts waitress with the same options."""
    args = ["waitress-serve"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if not value:
                args.append("--no-" + name.replace("_", "-"))
            # true booleans are waitress 3's defaults (clear_untrusted_proxy_headers): nothing to say
        elif isinstance(value, set):
            args.append(f"{flag}={' '.join(sorted(value))}")
        else:
            args.append(f"{flag}={value}")
    return shlex.join([*args, app_spec])


def waitress_error_messages(upload_max_mb):
    """The app's own words for the refusals waitress makes by itself (413 body too large, 500),
    so a client cannot tell which layer answered; other statuses use waitress's reason."""
    too_large = PayloadTooLargeError.for_limit(int(upload_max_mb * 1024 * 1024)).message
    return {413: too_large, 500: "Internal server error"}


def adapt_server(server, trusted_proxy_count, messages=None):
    """Give each listening socket of a waitress `server` JSON error bodies (`messages` by status)
    and, behind proxies, a forgiving X-Forwarded-For.

    Both act on this server object only (its `channel_class` and `application`); waitress
    itself is not patched.
    """
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            body = json.dumps({"message": (messages or {}).get(error.code, error.reason + ".")}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    listeners = [server] if isinstance(server, BaseWSGIServer) else []
    listeners += [d for d in getattr(server, "map", {}).values() if isinstance(d, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = JsonErrorChannel
        if trusted_proxy_count:
            listener.application = only_trusted_hops(listener.application, trusted_proxy_count)


def only_trusted_hops(proxy_headers_app, count):
    """Drop the X-Forwarded-For hops that no trusted proxy wrote, before waitress parses them.

    waitress uses only the last `count` hops but parses them all, and answers a plain-text 400
    when a client's own hop is malformed (`X-Forwarded-For: "abc` arrives from nginx as
    `"abc, 203.0.113.5`). Only the hops it would trust are passed on.
    """

    def middleware(environ, start_response):
        hops = environ.get("HTTP_X_FORWARDED_FOR")
        if hops:
            environ["HTTP_X_FORWARDED_FOR"] = ",".join(hops.split(",")[-count:])
        return proxy_headers_app(environ, start_response)

    return middleware


def raise_open_file_limit(wanted):
    """Raise this process's soft limit on open files towards `wanted` (never above the hard limit)."""
    try:
        import resource
    except ImportError:  # not on this platform: the operating system's limit applies
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("Open-file limit is %s, below the %s that the connection limit may need; "
                    "raise it (systemd: LimitNOFILE=) or lower --connection-limit", target, wanted)


@click.command("serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=click.IntRange(1),
              help="Request threads (compression runs in the job pool's WORKERS slots).")
@click.option("--trusted-proxy", default=None, metavar="ADDRESS",
              help="Address of the reverse proxy (default: TRUSTED_PROXY_ADDRESS); used when TRUSTED_PROXIES > 0.")
@click.option("--connection-limit", default=DEFAULT_CONNECTION_LIMIT, show_default=True, type=click.IntRange(1),
              help="Open connections beyond which waitress stops accepting.")
@click.option("--channel-timeout", default=DEFAULT_CHANNEL_TIMEOUT_S, show_default=True, type=click.IntRange(1),
              help="Seconds a silent connection stays open.")
@click.option("--print-command", is_flag=True,
              help="Print the equivalent plain waitress-serve command for these settings, and exit.")
@pass_script_info
def serve_command(info, print_command, trusted_proxy, **options):
    """Run the service under waitress, with limits from the settings (see the README's production section)."""
    app = info.load_app()
    if trusted_proxy is not None:
        if not app.config["TRUSTED_PROXIES"]:
            raise click.UsageError("--trusted-proxy needs TRUSTED_PROXIES set to the number of proxies in front.")
        setting = next(s for s in SETTINGS if s.name == "TRUSTED_PROXY_ADDRESS")
        try:
            trusted_proxy = setting.parse(trusted_proxy)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--trusted-proxy") from None
    kwargs = waitress_options(app.config, trusted_proxy=trusted_proxy, **options)
    if print_command:
        click.echo(waitress_serve_command(kwargs))
        return

    from waitress import create_server

    raise_open_file_limit(options["connection_limit"] * OPEN_FILES_PER_CONNECTION + OPEN_FILES_SPARE)
    runner = app.extensions["imgsmaller.jobs"]
    # Explicitly, and before the port opens: this process serves, so it runs the queue too
    # (jobs left queued by a previous process start now, not at the first request).
    runner.start()
    if app.config["MAX_WAITING_REQUESTS"] > kwargs["threads"] // 2:
        log.warning("MAX_WAITING_REQUESTS=%s is more than half of the %s threads: requests using `wait` can "
                    "leave too few threads for the others", app.config["MAX_WAITING_REQUESTS"], kwargs["threads"])
    try:
        server = create_server(app, **kwargs)
        messages = waitress_error_messages(app.config["UPLOAD_MAX_MB"])
        adapt_server(server, kwargs.get("trusted_proxy_count", 0), messages)
        if app.config["TRUSTED_PROXIES"]:
            log.info("Trusting %s from %s (%s prox%s)", " and ".join(TRUSTED_PROXY_HEADERS), kwargs["trusted_proxy"],
                     app.config["TRUSTED_PROXIES"], "y" if app.config["TRUSTED_PROXIES"] == 1 else "ies")
        server.print_listen("Serving on http://{}:{}")
        # SIGTERM ends waitress's loop like Ctrl-C (it stops accepting and ends its request threads);
        # then running jobs get SHUTDOWN_GRACE_S to finish before they go back to the queue; exit 0.
        with stop_on_signals():
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        runner.shutdown()


def warn_if_proxy_headers_were_dropped(app):
    """Log once when TRUSTED_PROXIES is set but a request from the proxy's address came without X-Forwarded-For.

    That is what a server started without the trusted-proxy options looks like (waitress
    dropped the header), or a request made on the server itself. The app cannot tell which,
    so it only says so, once per process.
    """
    if not app.config["TRUSTED_PROXIES"]:
        return
    proxy = app.config["TRUSTED_PROXY_ADDRESS"]
    warned = []

    @app.before_request
    def check_forwarded_for():
        if warned or "X-Forwarded-For" in request.headers or proxy not in ("*", request.remote_addr):
            return
        warned.append(True)
        log.warning("TRUSTED_PROXIES is %s but a request from %s came without X-Forwarded-For: if the server "
                    "is behind a proxy, start it with `flask --app app serve` (or waitress-serve's "
                    "--trusted-proxy options, README \"Running in production\"), or every client will look like %s.",
                    app.config["TRUSTED_PROXIES"], request.remote_addr, request.remote_addr)


def init_app(app):
    app.cli.add_command(serve_command)
    warn_if_proxy_headers_were_dropped(app)
