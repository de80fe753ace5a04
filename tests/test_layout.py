"""The architecture the file list promises: the engine is a library that loads without Flask or SQLite."""

import subprocess
import sys


def test_the_engine_imports_without_flask_or_sqlite():
    code = ("import sys, imgsmaller.engine; "
            "loaded = [m for m in ('flask', 'werkzeug', 'sqlite3') if m in sys.modules]; "
            "print(','.join(loaded))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
