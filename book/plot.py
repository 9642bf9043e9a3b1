#!/usr/bin/env python3
"""Draws the performance chapter's figure from benches/RESULTS.md.

Reads the main table (between the `ANCHOR: table` markers) and writes an SVG
with two panels per workload: how many times faster than Python's
multiprocessing forkpool is (log scale), and what fraction of the machine's
ceiling it reaches. No dependencies beyond the standard library, so the
figure can be redrawn anywhere:

    python3 book/plot.py            # writes book/src/images/performance.svg
"""

import math
import re
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "RESULTS.md"
OUT = ROOT / "book" / "src" / "images" / "performance.svg"


def rows():
    text = RESULTS.read_text()
    table = text.split("ANCHOR: table -->", 1)[1].split("<!-- ANCHOR_END: table", 1)[0]
    out = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        workload, ratio, at_ceiling = cells[0], cells[3], cells[6]
        m = re.match(r"([0-9.]+)x", ratio)
        c = re.match(r"([0-9.]+) %", at_ceiling)
        if m:
            out.append((workload, float(m.group(1)), float(c.group(1)) if c else None))
    return out


def svg(data):
    label_w, bar_w, gap, row_h = 430, 300, 40, 22
    top, left = 60, 10
    width = left + label_w + bar_w + gap + bar_w + 40
    height = top + row_h * len(data) + 50
    x0 = left + label_w  # speedup panel
    x1 = x0 + bar_w + gap  # ceiling panel
    lo, hi = 0.5, 100.0  # log axis of the speedup panel

    def sx(v):
        v = min(max(v, lo), hi)
        return x0 + bar_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{x0}" y="20" font-weight="bold">Python time / forkpool time (log scale)</text>',
        f'<text x="{x1}" y="20" font-weight="bold">forkpool at the machine\'s ceiling</text>',
        f'<text x="{left}" y="{height - 12}" fill="#555">Source: benches/RESULTS.md '
        f"(2 vCPUs, 24 GiB); drawn by book/plot.py</text>",
    ]
    for v in (0.5, 1, 2, 5, 10, 20, 50, 100):
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{top + row_h * len(data)}" '
                   f'stroke="{"#000" if v == 1 else "#ddd"}"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 12}" text-anchor="middle">{v:g}x</text>')
    for pct in (0, 25, 50, 75, 100):
        x = x1 + bar_w * pct / 110
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{top + row_h * len(data)}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 12}" text-anchor="middle">{pct}%</text>')
    for i, (name, ratio, ceiling) in enumerate(data):
        y = top + i * row_h
        short = name if len(name) <= 62 else name[:60] + "…"
        out.append(f'<text x="{left}" y="{y + 15}">{escape(short)}</text>')
        colour = "#2a7ab0" if ratio >= 1 else "#c0504d"
        xa, xb = sorted((sx(1), sx(ratio)))
        out.append(f'<rect x="{xa:.1f}" y="{y + 4}" width="{max(xb - xa, 1):.1f}" height="{row_h - 8}" fill="{colour}"/>')
        out.append(f'<text x="{sx(ratio) + (4 if ratio >= 1 else -4):.1f}" y="{y + 15}" '
                   f'text-anchor="{"start" if ratio >= 1 else "end"}">{ratio:g}x</text>')
        if ceiling is not None:
            w = bar_w * min(ceiling, 110) / 110
            out.append(f'<rect x="{x1}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="#7a9f35"/>')
            out.append(f'<text x="{x1 + w + 4:.1f}" y="{y + 15}">{ceiling:g} %</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    data = rows()
    if not data:
        sys.exit("plot: no rows found in the RESULTS.md table")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(svg(data))
    print(f"plot: {len(data)} workloads -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
