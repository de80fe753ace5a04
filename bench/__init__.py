"""The compression benchmark: the engine against the command-line anchors people script.

Run `python -m bench --corpus DIR [--big]`; see bench/README.md. Not a test.
"""
