#!/usr/bin/env python3
"""Merges the Markdown tables of several runs of compare.py into one.

    python3 bench/compare.py ... --markdown run1.md   # and run2.md, run3.md
    python3 bench/spread.py run1.md run2.md run3.md > table.md

Each cell that holds a figure in every run becomes the median of the runs
and, when they differ, their range: `448 (430-512)`. A ratio column
(`X / this`) is recomputed from the medians of its two figures, so it
says how the typical runs compare, not the median of ratios; in the
memory table, whose sides are rows, from the medians of the row's figure
and of the "this crate" row's. Notes come
from the first run. Cells that are not figures in every run ("-", "n/a")
are kept from the first run.

Only the standard library is used.
"""

import statistics
import sys


def rows_of(path):
    """The tables of a file: a list of (header, rows), each row a list of
    cells; lines outside tables are kept as (None, line)."""
    out = []
    table = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                if table is None:
                    table = (cells, [])
                    out.append(table)
                elif set("".join(cells)) <= set("-"):
                    continue  # the separator under the header
                else:
                    table[1].append(cells)
            else:
                table = None
                out.append((None, line))
    return out


def number(cell):
    """The figure a cell holds, or None."""
    text = cell.replace(",", "").rstrip("x").strip()
    try:
        return float(text)
    except ValueError:
        return None


def show(x, like):
    """`x` with as many decimals as `like` has, thousands separated if it
    was."""
    digits = len(like.split(".")[1].rstrip("x")) if "." in like else 0
    text = f"{x:,.{digits}f}" if "," in like else f"{x:.{digits}f}"
    return text


def merge(files):
    runs = [rows_of(p) for p in files]
    first = runs[0]
    lines = []
    for t, item in enumerate(first):
        if item[0] is None:
            lines.append(item[1])
            continue
        header, rows = item
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        medians = {}
        for r, row in enumerate(rows):
            merged = []
            for c, cell in enumerate(row):
                name = header[c] if c < len(header) else ""
                values = []
                for run in runs:
                    try:
                        values.append(number(run[t][1][r][c]))
                    except (IndexError, TypeError):
                        values.append(None)
                if c == 0 or name in ("n", "notes") or None in values or " / " in name:
                    merged.append(cell)
                    continue
                mid = statistics.median(values)
                medians[(r, name)] = mid
                lo, hi = min(values), max(values)
                text = show(mid, cell)
                if show(lo, cell) != show(hi, cell):
                    text += f" ({show(lo, cell)}-{show(hi, cell)})"
                merged.append(text)
            # Ratios from the medians: "A / this" is A's median over this
            # crate's.
            for c, name in enumerate(header):
                if " / " not in name or c >= len(merged):
                    continue
                num, den = name.split(" / ")
                a = next((v for (rr, h), v in medians.items() if rr == r and h.startswith(num)), None)
                b = next((v for (rr, h), v in medians.items() if rr == r and h.startswith(den)), None)
                if b is None:
                    b = next(
                        (v for (rr, h), v in medians.items() if rr == r and h.startswith("this crate")),
                        None,
                    )
                if a is None and num.endswith(" Python"):
                    # The memory table: "RSS Python / this" is this row's
                    # "worker RSS" over the "this crate" row's.
                    metric = num[: -len(" Python")]
                    col = next((h for h in header if h.startswith(f"worker {metric}")), None)
                    ours = next((i for i, row_ in enumerate(rows) if row_[0].startswith("this crate")), None)
                    if col is not None and ours is not None and ours != r:
                        a, b = medians.get((r, col)), medians.get((ours, col))
                if a is not None and b:
                    merged[c] = f"{a / b:.2f}x"
            lines.append("| " + " | ".join(merged) + " |")
    return "\n".join(lines)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(merge(sys.argv[1:]))


if __name__ == "__main__":
    main()
