"""The architecture the file list promises: the engine is a library that loads without Flask or SQLite."""

import pathlib
import re
import subprocess
import sys


def test_the_engine_imports_without_flask_or_sqlite():
    code = ("import sys, imgsmaller.engine; "
            "loaded = [m for m in ('flask', 'werkzeug', 'sqlite3') if m in sys.modules]; "
            "print(','.join(loaded))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# The engine's layers, as each module's docstring states them: a module may
# import only the engine modules listed for it (a new module must be placed here).
ENGINE_IMPORTS = {
    "score": set(), "search": set(), "encoders": set(), "allocator": set(), "avif_frames": set(), "metadata": set(),
    "resize": set(), "heif_limits": set(),
    "decode": {"avif_frames", "heif_limits"},
    "notes": set(),
    "png_encoder": {"encoders"},
    "formats": {"decode", "encoders", "png_encoder", "score"},
    "quality": {"allocator", "score"},
    "predicted": {"formats", "score", "search"},
    "target": {"formats", "predicted", "score", "search"},
    "auto": {"allocator", "formats", "quality", "score", "target"},
    "pipeline": {"auto", "decode", "encoders", "formats", "metadata", "notes", "quality", "resize", "target"},
    "__init__": {"decode", "formats", "metadata", "pipeline", "resize"},
}


def test_engine_modules_import_only_the_layers_below_them():
    import ast
    import pathlib

    import imgsmaller.engine
    package = pathlib.Path(imgsmaller.engine.__file__).parent
    assert {path.stem for path in package.glob("*.py")} == set(ENGINE_IMPORTS)
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {alias.name for alias in node.names}
        assert imported <= ENGINE_IMPORTS[path.stem], f"{path.name} imports {imported - ENGINE_IMPORTS[path.stem]}"


def test_no_engine_name_hides_a_submodule_or_the_standard_library():
    # `from .probe import probe` once made imgsmaller.engine.probe the function,
    # and engine/codecs.py shadowed the standard library's codecs.
    import importlib
    import pkgutil

    import imgsmaller.engine
    for info in pkgutil.iter_modules(imgsmaller.engine.__path__):
        module = importlib.import_module(f"imgsmaller.engine.{info.name}")
        assert getattr(imgsmaller.engine, info.name) is module, info.name
        assert info.name not in sys.stdlib_module_names, info.name


PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "imgsmaller"
# Longer than ~350 lines on purpose: the batch client must stay one file that can be
# copied alone onto another machine; fetch.py is the file_url threat model as one
# step-by-step flow, each step named in its docstring with its test (the address
# rules already live apart, in addresses.py).
LONG_ON_PURPOSE = {"client.py", "fetch.py"}
MAX_LINES = 360


def modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_every_module_is_in_the_readmes_file_map():
    readme = (PACKAGE.parent / "README.md").read_text()
    file_map = readme[readme.index("## How it works"):readme.index("### Fetching")]
    missing = [str(path.relative_to(PACKAGE)) for path in modules() if path.name not in file_map]
    assert not missing, f"modules missing from the README's file map: {missing}"


def test_only_job_store_writes_sql_on_the_jobs_table():
    statement = re.compile(r"\b(FROM|INTO|UPDATE)\s+jobs\b")
    owners = {str(path.relative_to(PACKAGE)) for path in modules() if statement.search(path.read_text())}
    assert owners == {"job_store.py"}


def test_no_module_is_longer_than_about_350_lines():
    long = {path.name: n for path in modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and path.name not in LONG_ON_PURPOSE}
    assert not long, long
