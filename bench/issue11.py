"""python -m bench.issue11 --corpus DIR [--base REV]: issue 11's four measurements in one run.

(a) engine vs the anchor CLIs, per job, time and CPU (`bench.lean`, before = `--base`),
(b) jobs/s through the real service with 1 and 2 workers (`bench.scaleout`, SQLite, photo jobs),
(c) peak RSS per job, 12 MP (and 48 MP with `--big`) in every output format (`bench.memory`),
(d) `GET /api/v1/info` req/s vs a bare Flask view on the same waitress (`bench.info_overhead`).

Each part runs in its own process, one after the other, so that no part loads the machine
while another is timed. The tables are printed as each part ends and collected in one
Markdown file (bench/out/issue11-*.md) headed by the date, machine, revision and load.
The anchors are Debian's ImageMagick and cwebp: run with `PATH=/usr/bin:$PATH` where
/usr/local/bin holds another `convert`.
"""

import argparse
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parts(args):
    base = ["--base", args.base] if args.base else []
    yield "(a) engine vs anchors, per job", ["bench.lean", "--corpus", args.corpus, "--limit", str(args.limit),
                                                     "--mid", str(args.mid), *base]
    yield "(b) 1 and 2 workers through the real service", ["bench.scaleout", "--postgres", "", "--rounds", "3",
                                                           "--photo", "12", "--pickups", "0"]
    yield "(c) peak RSS per job", ["bench.memory", "--corpus", args.corpus, "--sizes", "12,48" if args.big else "12"]
    yield "(d) /api/v1/info vs bare Flask", ["bench.info_overhead", "--seconds", "4", "--rounds", "5", *base]


def header(args):
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    load = os.getloadavg()
    return (f"# Issue 11 in one run — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, revision {rev}"
            f"{f', before = {args.base}' if args.base else ''}, load average {load[0]:.1f} / {load[1]:.1f}\n")


def run_part(title, command):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    load = os.getloadavg()[0]
    body = done.stdout
    if done.returncode:
        body += f"\nfailed ({done.returncode}):\n{done.stderr[-2000:]}"
    return f"## {title} — `python -m {' '.join(command)}` ({minutes:.1f} min, load {load:.1f} after)\n\n{body}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.issue11", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder of images (photos become JPEG q95 uploads)")
    parser.add_argument("--base", help="git revision of the 'before' engine and app (default: none)")
    parser.add_argument("--limit", type=int, default=12, help="photos and graphics for part (a)")
    parser.add_argument("--mid", type=int, default=6, help="1600x1200 photo mosaics for part (a)")
    parser.add_argument("--big", action="store_true", help="add the 48 MP rows to part (c) (slow)")
    parser.add_argument("--out", default="bench/out")
    args = parser.parse_args(argv)
    out = ROOT / args.out / f"issue11-{time.strftime('%Y%m%d-%H%M')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = header(args)
    print(text, flush=True)
    for title, command in parts(args):
        section = run_part(title, command)
        print(section, flush=True)
        text += "\n" + section
        out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
