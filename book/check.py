#!/usr/bin/env python3
"""Checks the book's sources where mdBook does not.

mdBook logs a broken `{{#include}}` and goes on (exit code 0), includes
nothing for an anchor that does not exist, and does not check links. This
script fails (exit code 1) on:

- an `{{#include}}` / `{{#rustdoc_include}}` whose file is missing, or whose
  anchor is missing, unclosed or empty in that file;
- a relative link to a file that does not exist;
- a link to `#fragment` (in the same or another chapter) with no heading of
  that id;
- a chapter of SUMMARY.md that does not exist, or a chapter file that
  SUMMARY.md does not list.

Usage: python3 book/check.py [book-dir]
"""

import re
import sys
from pathlib import Path

INCLUDE = re.compile(r"\{\{#(?:include|rustdoc_include)\s+([^}\s]+)\s*\}\}")
LINK = re.compile(r"\[(?:[^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(?:\{#([A-Za-z0-9_-]+)\})?\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(text: str) -> str:
    """The id mdBook gives a heading (its `normalize_id`)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.replace("`", "").replace("*", "")
    out = []
    for ch in text.strip().lower():
        if ch.isalnum() or ch in "_-":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def prose_lines(text: str):
    """The lines outside fenced code blocks, with their numbers."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def heading_ids(path: Path) -> set:
    ids = set()
    for _, line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if m:
            ids.add(m.group(3) or slug(m.group(2)))
    return ids


def check_include(md: Path, n: int, spec: str, errors: list) -> None:
    target, _, anchor = spec.partition(":")
    path = (md.parent / target).resolve()
    where = f"{md}:{n}"
    if not path.is_file():
        errors.append(f"{where}: include of a missing file: {target}")
        return
    if not anchor or re.fullmatch(r"[0-9:]*", anchor):
        return  # whole file, or a line range
    text = path.read_text()
    start = re.search(rf"ANCHOR:\s*{re.escape(anchor)}\b", text)
    end = re.search(rf"ANCHOR_END:\s*{re.escape(anchor)}\b", text)
    if not start:
        errors.append(f"{where}: anchor `{anchor}` is not in {target}")
    elif not end or end.start() < start.end():
        errors.append(f"{where}: anchor `{anchor}` in {target} is not closed (ANCHOR_END)")
    else:
        body = text[start.end():end.start()]
        body = "\n".join(body.splitlines()[1:-1])
        if not body.strip():
            errors.append(f"{where}: anchor `{anchor}` in {target} is empty")


def check_link(md: Path, n: int, target: str, src: Path, errors: list) -> None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    where = f"{md}:{n}"
    path_part, _, frag = target.partition("#")
    dest = md if not path_part else (md.parent / path_part).resolve()
    if not dest.exists():
        errors.append(f"{where}: link to a missing file: {target}")
        return
    if frag and dest.suffix == ".md" and frag not in heading_ids(dest):
        errors.append(f"{where}: link to `#{frag}`, but {dest.relative_to(src)} has no such heading")


def main() -> int:
    book = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent).resolve()
    src = book / "src"
    errors: list = []
    summary = (src / "SUMMARY.md").read_text()
    listed = set()
    for target in LINK.findall(summary):
        listed.add((src / target).resolve())
        if not (src / target).is_file():
            errors.append(f"SUMMARY.md: chapter {target} does not exist")
    for md in sorted(src.rglob("*.md")):
        if md.name != "SUMMARY.md" and md.resolve() not in listed:
            errors.append(f"{md.relative_to(src)}: not listed in SUMMARY.md")
        text = md.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            for spec in INCLUDE.findall(line):
                check_include(md, n, spec, errors)
        for n, line in prose_lines(text):
            for target in LINK.findall(line):
                check_link(md, n, target, src, errors)
    for e in errors:
        print(f"book check: {e}", file=sys.stderr)
    if errors:
        print(f"book check: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"book check: {len(list(src.rglob('*.md')))} chapters, includes and links all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
