"""A long schemathesis run of tests/test_openapi.py: many examples per operation, several seeds.

    python bench/openapi_fuzz.py [--examples 300] [--seeds 3]

CI runs the same test with 12 examples and one seed (about 20 s); this takes minutes and
may find what the short run misses. Each seed is one pytest run; the exit code is the
first failing run's.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="examples per operation and phase (CI: 12)")
    parser.add_argument("--seeds", type=int, default=3, help="runs, with seeds 1..N")
    args = parser.parse_args()
    for seed in range(1, args.seeds + 1):
        env = {**os.environ, "IMGSMALLER_TEST_OPENAPI_EXAMPLES": str(args.examples),
               "IMGSMALLER_TEST_OPENAPI_SEED": str(seed)}
        print(f"seed {seed}, {args.examples} examples", flush=True)
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/test_openapi.py", "-k", "keeps_its_openapi_document"], cwd=ROOT, env=env)
        if result.returncode:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
