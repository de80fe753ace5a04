"""The README keeps its promises: every setting documented, CI running its test command."""

import pathlib

from imgsmaller.settings import SETTINGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_setting():
    missing = [s.name for s in SETTINGS if f"| `{s.name}` |" not in README]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_ci_runs_the_readme_test_command_exactly():
    command = next(line for line in README.splitlines() if "requirements-dev.txt" in line and "pytest" in line)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
