"""The child process of one pool slot: runs the engine on bytes it is sent, and nothing else.

Imports the stdlib and (in the child only) the engine; no Flask, no SQL, no storage. The parent
(pool.py) reads the input, sends `(job_id, data, options)` over a Pipe, and gets back
`("ok", Result, cpu_s, peak)`, `("error", public message, cpu_s, peak)` or `("crash", None, cpu_s,
peak)`, where peak is the child's peak RSS during the job above its RSS before, in MiB (None where
the platform cannot tell: VmHWM, reset per job). Because
the work is in another process it can really be stopped: at JOB_TIMEOUT_S the parent SIGKILLs the
child and starts a new one, where a thread would have run on (issue 14, finding 5), and two slots
compress on two cores at once instead of sharing one GIL (measured in bench/RESULTS.md).

Children come from a "forkserver" that imported the engine once, so a new child costs a fork, not
a fresh interpreter; a server process with threads never forks itself.
"""

import logging
import multiprocessing
import os
import resource
import signal
import time
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

# The forkserver imports these once; each child is a fork of it with numpy, scipy and Pillow loaded.
PRELOAD = ["imgsmaller.engine"]
JOBS_PER_CHILD = 200  # then a fresh child: bounds what fragmentation or a leak in a codec can keep


def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class Child:
    """One child process and its end of the pipe. Not thread-safe: one slot thread owns it."""

    def __init__(self, function=None):
        self.function = function  # picklable by reference; None: imgsmaller.engine.compress
        self.process = None
        self.conn = None
        self.jobs = 0

    def start(self):
        parent_end, child_end = multiprocessing.Pipe()
        self.process = context().Process(target=child_main, args=(child_end, self.function),
                                         name="imgsmaller-job", daemon=True)
        self.process.start()
        child_end.close()
        self.conn, self.jobs = parent_end, 0

    def send(self, job_id, data, options):
        """Hand a job to the child, (re)starting it when needed."""
        if self.process is None or not self.process.is_alive() or self.jobs >= JOBS_PER_CHILD:
            self.stop()
            self.start()
        self.jobs += 1
        self.conn.send((job_id, data, options))

    def wait(self, timeout):
        """The child's answer, or None if it is still working after `timeout` seconds.

        Raises ChildDied (with the exit code) if the child ended without answering.
        """
        ready = wait([self.conn, self.process.sentinel], timeout)
        if not ready:
            return None
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        self.process.join(5)
        code = self.process.exitcode
        self._forget()
        raise ChildDied(code)

    def kill(self):
        """SIGKILL the child (it may be mid-encode) and wait for it to go."""
        if self.process is not None:
            self.process.kill()
            self.process.join(10)
        self._forget()

    def stop(self):
        """End an idle child politely (EOF on its pipe), or kill it if it does not go."""
        if self.process is None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self._forget()

    def _forget(self):
        if self.conn is not None:
            self.conn.close()
        if self.process is not None:
            self.process.close()
        self.process = self.conn = None


class ChildDied(Exception):
    """The child ended mid-job (killed by the kernel's OOM killer, a segfault in a codec, ...)."""

    def __init__(self, exitcode):
        super().__init__(f"exit code {exitcode}")
        self.exitcode = exitcode


def child_main(conn, function):
    """The child's loop: one job at a time until the parent sends None or goes away."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if function is None:
        from .engine import compress as function
    from .engine.allocator import tune_for_jobs
    tune_for_jobs()

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job_id, data, options = message
        cpu, start = time.process_time(), start_peak()
        answer = run_one(function, job_id, data, options)
        del data
        try:
            conn.send((*answer, time.process_time() - cpu, peak_above_mb(start)))
        except (EOFError, OSError):
            return


def run_one(function, job_id, data, options):
    """One job through `function` (engine.compress): ("ok", Result), ("error", public message) or
    ("crash", None). The child's loop, and the pool's inline mode (tests), in the calling thread."""
    from .errors import ServiceError

    try:
        return "ok", function(data, **options)
    except ServiceError as error:
        return "error", error.message
    except Exception:
        log.exception("Job %s failed", job_id)
        return "crash", None


def _status_kib(field):
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def start_peak():
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs) -> its RSS now, in KiB, or None."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        return _status_kib("VmRSS")
    except OSError:
        return None


def peak_above_mb(start_kib):
    """The peak RSS since start_peak() above what it was then, in MiB; None where it cannot be told."""
    if start_kib is None:
        return None
    try:
        peak = _status_kib("VmHWM")
    except OSError:
        peak = None
    if peak is None:  # ru_maxrss: the life-time peak, an upper bound
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(max(0, peak - start_kib) / 1024, 1)


def _die_with_parent():
    """Linux: SIGKILL this child when its parent (the forkserver, which ends with the pool's
    process) goes, so a `kill -9` of a worker leaves no orphan burning a core."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent went before prctl took effect
        os._exit(1)
