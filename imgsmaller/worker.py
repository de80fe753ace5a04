"""`flask --app app worker`: a process that runs jobs and maintenance only, no HTTP; and SIGTERM handling.

Imports click, Flask's CLI and signal; of the app it uses only the job pool that create_app built.
`stop_on_signals` is shared with `serve`: SIGTERM (systemd's stop, `kill`) and SIGINT (Ctrl-C)
both mean "stop claiming, let running jobs finish for SHUTDOWN_GRACE_S, then put them back in
the queue, exit 0".
"""

import contextlib
import logging
import signal
import threading

import click
from flask.cli import pass_script_info

log = logging.getLogger(__name__)


class Stop(KeyboardInterrupt):
    """Raised in the main thread by a stop signal (see stop_on_signals). A KeyboardInterrupt, so
    waitress's loop treats SIGTERM as it treats Ctrl-C: it ends its request threads and returns."""


@contextlib.contextmanager
def stop_on_signals(event=None):
    """While inside: SIGTERM and SIGINT set `event`, or, without one, raise Stop in the main thread
    (which interrupts a blocking server loop such as waitress's). Handlers are restored after."""
    def handle(signum, frame):
        log.info("Got %s: stopping", signal.Signals(signum).name)
        if event is None:
            raise Stop()
        event.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("worker")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Job slots, each with its own child process (default: WORKERS).")
@pass_script_info
def worker_command(info, threads):
    """Run jobs and maintenance (no HTTP) until SIGTERM; running jobs get SHUTDOWN_GRACE_S to finish."""
    app = info.load_app()
    runner = app.extensions["imgsmaller.jobs"]
    slots = threads or app.config["WORKERS"]
    if slots < 1:
        raise click.UsageError("WORKERS is 0 here: give --threads N (a worker needs at least one slot).")
    runner.workers = slots
    stop = threading.Event()
    with stop_on_signals(stop):
        runner.start()
        log.info("Worker %s on %s: %s slot(s), lease %ss, job memory %.0f MiB; waiting for jobs", runner.instance_id,
                 runner.upkeep.hostname, slots, runner.lease_s, runner.memory.limit_mb)
        while not stop.wait(1):
            if not runner.alive:
                raise click.ClickException("The job pool's maintenance thread died; see the log above.")
        runner.shutdown()
    log.info("Worker %s stopped", runner.instance_id)


def init_app(app):
    app.cli.add_command(worker_command)
