"""The repository stands on its own: no tracked file cites the team's private notes, and every
relative link in the markdown pages (README.md, examples/README.md, docs/*.md) resolves, anchors
included."""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Citations of notes that live outside the repository. The patterns are built by concatenation so
# that this file does not match them itself.
PRIVATE_CITATION = re.compile("|".join((
    re.escape("REFERENCE" + ".md"),
    "REFERENCE" + r" +\d",  # section citations: the word, a space, a section number
    re.escape(".." + "/shared"),
    re.escape("DESIGN" + ".md"),
)))

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked_files(root: Path = ROOT) -> list[Path]:
    """Tracked files present in the working tree."""
    if not (root / ".git").exists():
        pytest.skip(f"{root} is not a git checkout: no list of tracked files")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    paths = [root / name for name in out.decode("utf-8", "surrogateescape").split("\0") if name]
    return [p for p in paths if p.is_file()]


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def private_citations(paths, root: Path = ROOT) -> list[str]:
    """'path:line: text' for every line of a text file in ``paths`` that cites private notes."""
    hits = []
    for path in paths:
        text = read_text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = PRIVATE_CITATION.search(line)
            if match:
                context = line[max(0, match.start() - 50):match.end() + 50].strip()
                hits.append(f"{path.relative_to(root)}:{number}: ...{context}...")
    return hits


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans removed."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, INLINE_CODE.sub("", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors of every heading of the markdown file ``path`` (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """'page:line: target (why)' for every relative link of ``page`` that does not resolve."""
    problems = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        targets = INLINE_LINK.findall(line)
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if SCHEME.match(target):
                continue  # http(s), mailto, ...: not checked offline
            path_part, _, fragment = target.partition("#")
            path_part = urllib.parse.unquote(path_part.split("?")[0])
            linked = page if not path_part else (page.parent / path_part).resolve()
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not linked.exists():
                problems.append(f"{where} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                problems.append(f"{where} (no heading with anchor #{fragment})")
    return problems


def markdown_pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", root / "examples" / "README.md", *sorted((root / "docs").glob("*.md"))]


# -- the repository -------------------------------------------------------------------------------

def test_no_tracked_file_cites_private_notes():
    files = tracked_files()
    assert files, "git ls-files listed nothing"
    hits = private_citations(files)
    assert not hits, "tracked files cite notes outside the repository:\n" + "\n".join(hits)


def test_every_relative_markdown_link_resolves():
    pages = markdown_pages()
    missing = [p for p in pages if not p.exists()]
    assert not missing, f"markdown pages missing: {missing}"
    assert len(pages) >= 7, [p.name for p in pages]  # README, examples/README, docs index + 5 pages
    problems = [problem for page in pages for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = set(INLINE_LINK.findall(index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert {"method.md", "conventions.md", "attacks.md", "kernels.md", "sources.md"} <= pages
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"


# -- the checkers themselves ----------------------------------------------------------------------

def test_citation_checker_flags_each_pattern_and_skips_binary_files(tmp_path):
    lines = ["see " + "REFERENCE" + ".md 1.2", "as in " + "REFERENCE" + " 4", "data in .." + "/shared/x",
             "read " + "DESIGN" + ".md", "a REFERENCE to nothing in particular"]
    text_file = tmp_path / "notes.py"
    text_file.write_text("\n".join(lines) + "\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\0" + lines[0].encode())
    hits = private_citations([text_file, binary], root=tmp_path)
    assert [hit.split(":")[1] for hit in hits] == ["1", "2", "3", "4"]


def test_link_checker_flags_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The float32 grid: a trap\n\ntext\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok anchor](docs/a.md#the-float32-grid-a-trap) [web](https://example.org/x)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nowhere) ![img](docs/missing.png)\n"
        "```\n[in code](nowhere.md)\n```\n"
        "`[inline code](nowhere.md)` [self](#title)\n"
        "[ref]: docs/c.md\n")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md (no such file)",
        "docs/a.md#nowhere (no heading with anchor #nowhere)",
        "docs/missing.png (no such file)",
        "#title (no heading with anchor #title)",
        "docs/c.md (no such file)",
    ]
