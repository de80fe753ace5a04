"""Threads or child processes for the job pool's slots: jobs/s with 1 and 2 slots, CPU/wall, the hop's cost.

    .venv/bin/python -m bench.slots --corpus CORPUS [--photos 12]

The same jobs in each mode: per photo (the first N photos of CORPUS, as JPEG q95 uploads),
auto JPEG and WebP at 100KB. "threads" calls engine.compress in a ThreadPoolExecutor, as the
pool did before; "processes" hands each job to a slot's child (imgsmaller/job_process.py), as
the pool does now. CPU is this process's plus, for processes, what each child reports per job.
Prints a Markdown table (bench/RESULTS.md keeps the latest).
"""

import argparse
import os
import platform
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from imgsmaller import engine
from imgsmaller.job_process import Child

from .corpus import load

MAX_PIXELS = 50_000_000


def echo(data, **options):
    """A job that does no work: what remains is the cost of the hop itself."""
    return data


def jobs_for(photos):
    return [(item["data"], {"output": output, "target_size": target, "max_pixels": MAX_PIXELS})
            for item in photos for output, target in (("jpeg", None), ("webp", 100 * 1024))]


def run_threads(jobs, slots):
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        results = list(pool.map(lambda job: engine.compress(job[0], **job[1]), jobs))
    return time.perf_counter() - wall, time.process_time() - cpu, results


def run_processes(jobs, slots, children):
    todo = queue.SimpleQueue()
    for n, job in enumerate(jobs):
        todo.put((n, job))
    results, child_cpu = [None] * len(jobs), [0.0]
    lock = threading.Lock()

    def slot(child):
        while True:
            try:
                n, (data, options) = todo.get_nowait()
            except queue.Empty:
                return
            child.send(n, data, options)
            kind, value, cpu, _peak = child.wait(None)
            assert kind == "ok", (kind, value)
            results[n] = value
            with lock:
                child_cpu[0] += cpu

    cpu, wall = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=slot, args=(child,)) for child in children[:slots]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu + child_cpu[0], results


def hop_cost(child, sizes=(10_000, 1_000_000, 10_000_000), repeat=20):
    """Median round-trip (send input, get it back) through an idle child, per payload size, in ms."""
    costs = {}
    for size in sizes:
        data, times = b"x" * size, []
        for n in range(repeat):
            started = time.perf_counter()
            child.send(n, data, {})
            kind, value, _, _ = child.wait(None)
            times.append(time.perf_counter() - started)
            assert kind == "ok" and len(value) == size
        costs[size] = 1000 * sorted(times)[len(times) // 2]
    return costs


def child_start_cost(repeat=5):
    times = []
    for n in range(repeat):
        child = Child(echo)
        started = time.perf_counter()
        child.send(n, b"", {})
        child.wait(None)
        times.append(time.perf_counter() - started)
        child.stop()
    return 1000 * sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder of images (photos become JPEG q95 uploads)")
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each configuration; the fastest is kept")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    photos = [item for item in load(args.corpus) if item["kind"] == "photo"][:args.photos]
    jobs = jobs_for(photos)
    children = [Child(), Child()]
    for child in children:  # warm: the forkserver's start-up and the first imports are not the pool's steady state
        child.send(0, jobs[0][0], jobs[0][1])
        child.wait(None)
    engine.compress(jobs[0][0], **jobs[0][1])

    # Interleaved and repeated, keeping each configuration's fastest run: on a machine shared with
    # other work, the best of N is the closest to what the code can do.
    best = {}
    configs = [("threads", 1), ("processes", 1), ("threads", 2), ("processes", 2)]
    for _ in range(args.repeat):
        for mode, slots in configs:
            if mode == "threads":
                wall, cpu, results = run_threads(jobs, slots)
            else:
                wall, cpu, results = run_processes(jobs, slots, children)
            assert all(r.data for r in results)
            if (mode, slots) not in best or wall < best[mode, slots][0]:
                best[mode, slots] = (wall, cpu)
    rows = []
    for mode, slots in sorted(configs):
        wall, cpu = best[mode, slots]
        rows.append((mode, slots, len(jobs) / wall, best[mode, 1][0] / wall, cpu / wall, wall))
    for child in children:
        child.stop()
    echo_child = Child(echo)
    hops = hop_cost(echo_child)
    echo_child.stop()
    start_ms = child_start_cost()

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.machine()}, {os.cpu_count()} cores"
          f" · Python {platform.python_version()} · {len(photos)} photos, {len(jobs)} jobs"
          f" (auto JPEG + WebP 100KB each) · best of {args.repeat} · load average {load_before[0]:.1f}"
          f" before, {os.getloadavg()[0]:.1f} after\n")
    print("| mode | slots | jobs/s | speed-up vs 1 slot | CPU/wall | wall s |")
    print("|---|---|---|---|---|---|")
    for mode, slots, rate, speedup, ratio, wall in rows:
        print(f"| {mode} | {slots} | {rate:.2f} | {speedup:.2f}× | {ratio:.2f} | {wall:.1f} |")
    print("\n| process hop (an idle child, echo) | median ms |")
    print("|---|---|")
    for size, ms in hops.items():
        print(f"| round trip of {size:,} bytes | {ms:.2f} |")
    print(f"| a new child (fork of the forkserver) and its first job | {start_ms:.1f} |")


if __name__ == "__main__":
    main()
