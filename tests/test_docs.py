"""The documentation stays inside the repository: its links resolve, and nothing points outside.

A link that leaves the checkout (a sibling folder, a file only one machine has) works for
whoever wrote it and for nobody who clones the repository.
"""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Folders that are not part of the repository's content (see .gitignore) or are git's own.
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "instance", "out"}
# Written in two parts so that this file does not mention them itself.
OUTSIDE = ["../" + "shared", "/work/" + "shared", "API" + ".md", "CODECS" + ".md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\S\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)[^`].*?\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def without_code(text):
    """Markdown text minus fenced blocks and code spans, where brackets and # are not syntax."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text):
    prose = without_code(text)
    return _INLINE_LINK.findall(prose) + _REFERENCE.findall(prose)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings, numbered as GitHub numbers repeats."""
    seen, result = {}, set()
    # Code spans are kept here (only their backticks go): `file_url` in a heading is part of its anchor.
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(document):
    """Each relative link of `document` whose file (or heading anchor) does not exist."""
    broken = []
    for target in links(document.read_text(encoding="utf-8")):
        if _SCHEME.match(target):
            continue  # http:, https:, mailto: leave the repository on purpose
        path_part, _, fragment = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(target)
        elif fragment and path.suffix == ".md" and fragment.lower() not in anchors(path):
            broken.append(target)
    return broken


def repository_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            yield pathlib.Path(folder, name)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(document):
    assert not broken_links(document), f"{document.relative_to(ROOT)}: broken links {broken_links(document)}"


def test_the_api_reference_is_in_the_repository_and_linked_from_the_readme():
    assert (ROOT / "docs" / "api.md").is_file()
    assert "docs/api.md" in links((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", OUTSIDE)
def test_no_file_points_outside_the_repository(name):
    needle = name.encode()
    mentions = [str(path.relative_to(ROOT)) for path in repository_files() if needle in path.read_bytes()]
    assert not mentions, f"files mentioning {name}, which is not in the repository: {mentions}"


def test_the_link_check_catches_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n\n## Fetching `file_url` safely\n")
    document = tmp_path / "doc.md"
    document.write_text(
        "[ok](there.md) [ok](there.md#fetching-file_url-safely) [ok](#top) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [bad anchor](there.md#no-such-heading)\n"
        "`[in code](also-missing.md)`\n\n```\n[in a block](missing-too.md)\n```\n\n"
        "# Top\n\n[ref]: nowhere/file.txt\n"
    )
    assert broken_links(document) == ["missing.md", "there.md#no-such-heading", "nowhere/file.txt"]
