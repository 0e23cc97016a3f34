#!/usr/bin/env python3
"""Run the Rust benchmark driver and the Python multiprocessing cases side
by side, and print a table of per-operation times and ratios.

    python3 bench/compare.py                      # every case, 5 reps
    python3 bench/compare.py --cases pipe_rtt,spawn --reps 3
    python3 bench/compare.py --rust-bin target/release/examples/bench
    python3 bench/compare.py --python-only --n 1000
    python3 bench/compare.py --procspawn-bin bench/procspawn/target/release/procspawn-bench

For each case the Rust driver runs first
(``cargo run --release --example bench -- CASE --reps R [--n N]``, or the
binary given by ``--rust-bin``); then ``bench/mp_bench.py`` runs the same
case. Without ``--n`` the Python side is given the n that the Rust line
reports, so both sides do the same work (``spawn`` under the slow start
methods, forkserver and spawn, is capped at the Python default n to keep a
run short). A case the Rust driver does not know, or any failure, shows as
"n/a". Every JSON line either side printed is written, unchanged, to
``bench/results/latest.jsonl``.

The ratio columns are python/rust: above 1 means Rust is faster. For
``spawn`` the notes column also gives the Rust ``floor_spawn`` case (a bare
re-exec of the same binary) and ``floor_fork`` (fork, ``_exit``, wait), with
the ratios spawn/floor_spawn and spawn/floor_fork; for ``pipe_rtt`` and
``pipe_rtt_spin``, the raw socketpair floor. ``spawn_tokio_main`` and
``pipe_rtt_spin`` run against Python's ``spawn`` and ``pipe_rtt``.

With ``--procspawn-bin PATH`` the cases that the procspawn driver
(``bench/procspawn``, a separate Cargo project) knows run a third time,
with the n of the Rust line, and the table gains a procspawn column and
the ratio procspawn/rust. A case that driver does not have (it exits with
status 2) shows as "-". procspawn re-executes the binary for each child, so
the ``spawn`` row then also notes the Rust ``spawn_exec`` case (this crate
re-executing too) and the ratio procspawn/spawn_exec.

Memory cases (``pool_idle_rss``: the ``VmRSS`` and ``Pss`` of an idle
``Pool(2)`` worker) run under every Python start method, as ``spawn`` does,
and are printed in a table of their own after the time table: one row per
side with the worker's RSS and PSS in KiB and the ratios python/rust (above
1: this crate's worker is smaller). They stay out of the plot, and procspawn
is not run for them.

The supervisor cases (``sup_restart``, ``sup_start_100``,
``sup_shutdown_100``) have no multiprocessing counterpart: their other side
is supervisord (``bench/supervisord_bench.py``, which needs ``pip install
supervisor``), in a column of its own, with n capped at 10 for
``sup_restart``. Their notes give the Rust ``spawn`` case and the ratio to
it, which their goals are stated in.

Standard library only (supervisord for its column).
"""

import argparse
import json
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS = os.path.join(BENCH_DIR, "results", "latest.jsonl")
MP_BENCH = os.path.join(BENCH_DIR, "mp_bench.py")
SD_BENCH = os.path.join(BENCH_DIR, "supervisord_bench.py")

sys.path.insert(0, BENCH_DIR)
import mp_bench  # noqa: E402  (for the case list and default n only)
import supervisord_bench  # noqa: E402  (for the case list only)

# The supervisor cases: their other side is supervisord, shown as the
# pseudo start method "supervisord".
SUPERVISOR_CASES = list(supervisord_bench.CASES)
PSEUDO_METHODS = ("supervisord",)

# supervisord restarts a program on its next main-loop turn, about a
# second after the kill: its side of sup_restart makes this many.
SUPERVISORD_RESTARTS = 10

# Rust cases a case's figure is judged against (its goal is a ratio to
# them), shown in its notes as "rust REF X us, case/REF R".
REFERENCES = {
    "sup_restart": "spawn",
    "sup_start_100": "spawn",
    "spawn_tokio_main": "spawn",
    "spawn_task": "spawn",
    "pipe_rtt_spin": "pipe_rtt",
    "pool_apply_seq_task": "pool_apply_seq",
    "pool_apply_seq_current_thread": "pool_apply_seq",
}


# Rust cases with no Python case of their own: the Python case run as
# their other side. `spawn_tokio_main` is `spawn` from a `#[tokio::main]`
# program; Python has no such thing, so its side is the plain start.
# `pool_apply_seq_task` is `pool_apply_seq` from a spawned task,
# `pool_apply_seq_current_thread` from a current-thread runtime's
# `block_on`, and `spawn_task` `spawn`; Python's have one caller, its
# main thread.
PYTHON_PEERS = {
    "spawn_tokio_main": "spawn",
    "spawn_task": "spawn",
    "pipe_rtt_spin": "pipe_rtt",
    "pool_apply_seq_task": "pool_apply_seq",
    "pool_apply_seq_current_thread": "pool_apply_seq",
}

# Rust-only floor cases shown in the notes of the case they bound.
FLOORS = {
    "spawn": ["floor_spawn", "floor_fork", "floor_warm"],
    "pipe_rtt": ["pipe_rtt_floor"],
    "pipe_rtt_spin": ["pipe_rtt_floor"],
}

# Cases whose lines carry memory figures (KiB) instead of per_op_us.
MEMORY_CASES = mp_bench.MEMORY_CASES

# Rust cases that start children the way procspawn does (re-executing the
# binary), shown in the notes of the case when procspawn runs it.
PROCSPAWN_PEERS = {"spawn": "spawn_exec"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def json_lines(text):
    """The JSON objects in `text` that look like benchmark lines."""
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and "case" in obj:
            out.append((raw, obj))
    return out


def is_result(obj, case):
    """Whether `obj` is the result line of `case` (a time or a memory line)."""
    if obj.get("case") != case:
        return False
    return "worker_rss_kib" in obj if case in MEMORY_CASES else "per_op_us" in obj


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


class Runner:
    def __init__(self, args):
        self.args = args
        self.raw = []  # every JSON line, in the order it was printed
        self.rust_broken = None  # a reason when the driver cannot run at all

    def _run(self, cmd):
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_DIR,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.args.timeout,
            )
        except subprocess.TimeoutExpired:
            return None, [], f"timed out after {self.args.timeout}s"
        except OSError as e:
            return None, [], str(e)
        lines = json_lines(proc.stdout)
        for raw, _ in lines:
            self.raw.append(raw)
        err = first_line(proc.stderr) or first_line(proc.stdout)
        return proc.returncode, lines, err

    def build_rust(self):
        if self.args.python_only or self.args.rust_bin:
            return
        log("building the Rust driver: cargo build --release --example bench")
        proc = subprocess.run(
            ["cargo", "build", "--release", "--example", "bench"],
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
            self.rust_broken = "the Rust driver did not build"
            log(self.rust_broken + ":\n  " + "\n  ".join(tail))

    def rust(self, case):
        """The Rust line for `case` (a dict), or a string saying why not."""
        if self.args.python_only:
            return "skipped"
        if self.rust_broken:
            return self.rust_broken
        if self.args.rust_bin:
            cmd = [os.path.abspath(self.args.rust_bin)]
        else:
            cmd = ["cargo", "run", "--quiet", "--release", "--example", "bench", "--"]
        cmd += [case, "--reps", str(self.args.reps)]
        if self.args.n is not None:
            cmd += ["--n", str(self.args.n)]
        log(f"rust   {case}")
        rc, lines, err = self._run(cmd)
        for _, obj in lines:
            if is_result(obj, case):
                return obj
        if rc is None:
            return err
        return f"exit {rc}: {err}" if err else f"exit {rc}"

    def procspawn(self, case, rust_line):
        """The procspawn line for `case`, None when that driver has no such
        case, or a string saying what went wrong."""
        if not self.args.procspawn_bin:
            return None
        cmd = [os.path.abspath(self.args.procspawn_bin), case, "--reps", str(self.args.reps)]
        n = self.args.n
        if n is None and isinstance(rust_line, dict) and rust_line.get("n"):
            n = int(rust_line["n"])
        if n is not None:
            cmd += ["--n", str(n)]
        log(f"procspawn {case} (n={n if n is not None else 'default'})")
        rc, lines, err = self._run(cmd)
        for _, obj in lines:
            if obj.get("case") == case and "per_op_us" in obj:
                return obj
        if rc == 2:
            return None  # not a case procspawn offers
        if rc is None:
            return err
        return f"exit {rc}: {err}" if err else f"exit {rc}"

    def python(self, case, method, n):
        if case in SUPERVISOR_CASES:
            cmd = [sys.executable, SD_BENCH, case, "--reps", str(self.args.reps)]
        else:
            case = PYTHON_PEERS.get(case, case)
            cmd = [sys.executable, MP_BENCH, case, "--reps", str(self.args.reps)]
            cmd += ["--start-method", method]
        if n is not None:
            cmd += ["--n", str(n)]
        log(f"python {case} ({method}, n={n if n is not None else 'default'})")
        rc, lines, err = self._run(cmd)
        for _, obj in lines:
            if is_result(obj, case):
                return obj
        if rc == 3 and case in SUPERVISOR_CASES:
            return "supervisord not installed (pip install supervisor)"
        return f"exit {rc}: {err}" if rc is not None else err


def python_n(args, case, method, rust_line):
    """The n the Python side runs with."""
    if args.n is not None:
        return args.n
    if not isinstance(rust_line, dict) or not rust_line.get("n"):
        return None  # the Python default
    n = int(rust_line["n"])
    if case == "spawn" and method != "fork":
        n = min(n, mp_bench.default_n(case, method))
    if case == "sup_restart":
        n = min(n, SUPERVISORD_RESTARTS)  # about a second each
    return n


def fmt_us(v):
    if not isinstance(v, (int, float)):
        return "n/a"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(num, den):
    if isinstance(num, dict) and isinstance(den, dict):
        a, b = num.get("per_op_us"), den.get("per_op_us")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            return f"{a / b:.2f}"
    return "n/a"


def fmt_kib(v):
    return f"{v:,}" if isinstance(v, int) else "n/a"


def kib_ratio(num, den, key):
    if isinstance(num, dict) and isinstance(den, dict):
        a, b = num.get(key), den.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            return f"{a / b:.2f}"
    return "n/a"


def memory_rows(row, methods):
    """The lines of a memory case's table: [method, rss, pss, rss ratio,
    pss ratio, notes] for this crate, then each Python start method."""
    rust = row["rust"]
    out = []
    sides = [("rust (fork server)", rust)] + [(f"python-{m}", row["python"].get(m)) for m in methods
                                if m in row["python"]]
    for side, res in sides:
        notes = []
        if isinstance(res, dict):
            if isinstance(res.get("worker_warm_rss_kib"), int):
                notes.append(f"0.2 s after its last task (before it gives back its code's "
                             f"pages) {fmt_kib(res['worker_warm_rss_kib'])} RSS, "
                             f"{fmt_kib(res.get('worker_warm_pss_kib'))} PSS KiB")
            if isinstance(res.get("spare_rss_kib"), int):
                notes.append(f"spare {fmt_kib(res['spare_rss_kib'])} RSS, "
                             f"{fmt_kib(res.get('spare_pss_kib'))} PSS KiB")
            if isinstance(res.get("fork_server_rss_kib"), int):
                notes.append(f"fork server {fmt_kib(res['fork_server_rss_kib'])} RSS, "
                             f"{fmt_kib(res.get('fork_server_pss_kib'))} PSS KiB")
        elif res != "skipped":
            notes.append(f"n/a ({res})")
        is_py = side.startswith("python-")
        out.append([
            side,
            fmt_kib(res.get("worker_rss_kib")) if isinstance(res, dict) else "n/a",
            fmt_kib(res.get("worker_pss_kib")) if isinstance(res, dict) else "n/a",
            kib_ratio(res, rust, "worker_rss_kib") if is_py else "-",
            kib_ratio(res, rust, "worker_pss_kib") if is_py else "-",
            "; ".join(notes),
        ])
    return out


def memory_title(row):
    first = next((v for v in [row["rust"], *row["python"].values()] if isinstance(v, dict)), {})
    return (f"{row['case']}: one idle worker of Pool({first.get('workers', 2)}) "
            f"after a map of {first.get('n', '?')} trivial tasks")


def print_aligned(table):
    """Prints rows of cells in columns: the first and last left-aligned,
    the others right-aligned, with a rule under the header row."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        line = "  ".join(
            c.ljust(w) if j in (0, len(row) - 1) else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))
        )
        print(line.rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_memory_table(rows, methods):
    header = ["method", "worker RSS KiB", "worker PSS KiB", "RSS py/rust", "PSS py/rust", "notes"]
    for r in rows:
        table = [header] + memory_rows(r, methods)
        print(memory_title(r))
        print_aligned(table)
        print()
    print("KiB = median over workers and reps of VmRSS (/proc/PID/status) and Pss "
          "(/proc/PID/smaps_rollup); py/rust above 1 means this crate's worker is smaller.")


def markdown_memory_table(rows, methods):
    """The memory tables as Markdown."""
    out = []
    for r in rows:
        out.append(f"{memory_title(r)}:")
        out.append("")
        head = ["", "worker RSS (KiB)", "worker PSS (KiB)", "RSS Python / this",
                "PSS Python / this", "notes"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for side, rss, pss, rr, pr, notes in memory_rows(r, methods):
            label = ("Python " + side[len("python-"):] if side.startswith("python-")
                     else "this crate (fork server)")
            rr = rr + "x" if rr not in ("-", "n/a") else rr
            pr = pr + "x" if pr not in ("-", "n/a") else pr
            out.append("| " + " | ".join([label, rss, pss, rr, pr, notes]) + " |")
        out.append("")
    return "\n".join(out)


def print_table(rows, methods, with_procspawn=False):
    header = ["case", "n rust", "n py", "rust us"]
    header += [f"py-{m} us" for m in methods]
    if with_procspawn:
        header += ["procspawn us"]
    header += [f"{m}/rust" for m in methods]
    if with_procspawn:
        header += ["procspawn/rust"]
    header += ["notes"]
    table = [header]
    for r in rows:
        rust = r["rust"]
        py = r["python"]
        n_py = sorted({str(v["n"]) for v in py.values() if isinstance(v, dict)})
        cells = [
            r["case"],
            str(rust["n"]) if isinstance(rust, dict) else "-",
            "/".join(n_py) if n_py else "-",
            fmt_us(rust.get("per_op_us")) if isinstance(rust, dict) else "n/a",
        ]
        cells += [
            fmt_us(py[m].get("per_op_us")) if isinstance(py.get(m), dict) else
            ("-" if m not in py else "n/a")
            for m in methods
        ]
        ps = r.get("procspawn")
        if with_procspawn:
            cells.append(fmt_us(ps.get("per_op_us")) if isinstance(ps, dict) else
                         ("-" if ps is None else "n/a"))
        cells += [ratio(py[m], rust) if m in py else "-" for m in methods]
        if with_procspawn:
            cells.append(ratio(ps, rust) if isinstance(ps, dict) else "-")
        cells.append("; ".join(r["notes"]))
        table.append(cells)
    print_aligned(table)
    print()
    print("us = median microseconds per operation; X/rust = X's time over this crate's, above 1 means this crate is faster.")


def markdown_table(rows, methods, with_procspawn=False):
    """The table as Markdown, for docs/performance.md."""
    head = ["case", "n", "this crate (us/op)"] + [f"Python {m} (us/op)" for m in methods]
    if with_procspawn:
        head += ["procspawn (us/op)"]
    head += [f"Python {m} / this" for m in methods]
    if with_procspawn:
        head += ["procspawn / this"]
    head += ["notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rust = r["rust"]
        py = r["python"]
        cells = [
            f"`{r['case']}`",
            str(rust["n"]) if isinstance(rust, dict) else "-",
            fmt_us(rust.get("per_op_us")) if isinstance(rust, dict) else "n/a",
        ]
        cells += [fmt_us(py[m].get("per_op_us")) if isinstance(py.get(m), dict) else "-" for m in methods]
        ps = r.get("procspawn")
        if with_procspawn:
            cells.append(fmt_us(ps.get("per_op_us")) if isinstance(ps, dict) else "-")
        cells += [ratio(py[m], rust) + "x" if isinstance(py.get(m), dict) else "-" for m in methods]
        if with_procspawn:
            cells.append(ratio(ps, rust) + "x" if isinstance(ps, dict) else "-")
        cells.append("; ".join(r["notes"]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(rows, methods, path):
    """A bar chart of Python's time over ours, per case and start method
    (log scale; above 1 means this crate is faster)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot needs matplotlib: pip install matplotlib")
        return False
    labels, values, colors = [], [], []
    palette = {"fork": "#4c72b0", "forkserver": "#55a868", "spawn": "#c44e52",
               "procspawn": "#dd8452"}
    for r in rows:
        rust = r["rust"]
        if not isinstance(rust, dict):
            continue
        for m in methods:
            res = r["python"].get(m)
            if isinstance(res, dict) and res.get("per_op_us") and rust.get("per_op_us"):
                labels.append(f"{r['case']} ({m})")
                values.append(res["per_op_us"] / rust["per_op_us"])
                colors.append(palette.get(m, "#8172b2"))
        ps = r.get("procspawn")
        if isinstance(ps, dict) and ps.get("per_op_us") and rust.get("per_op_us"):
            labels.append(f"{r['case']} (procspawn)")
            values.append(ps["per_op_us"] / rust["per_op_us"])
            colors.append(palette["procspawn"])
    if not values:
        log("nothing to plot")
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(values) + 1.5))
    y = range(len(values))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}x", va="center", fontsize=8)
    if any("(procspawn)" in label for label in labels):
        ax.set_xlabel("Python's or procspawn's time / tokio-multiprocessing time (log; > 1: this crate is faster)")
        ax.set_title("tokio-multiprocessing vs Python multiprocessing and procspawn, medians")
    else:
        ax.set_xlabel("Python multiprocessing time / tokio-multiprocessing time (log scale; > 1: faster than Python)")
        ax.set_title("tokio-multiprocessing vs Python multiprocessing, medians, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    all_cases = list(mp_bench.CASES) + list(PYTHON_PEERS) + SUPERVISOR_CASES
    parser = argparse.ArgumentParser(
        description="Run the Rust driver and Python multiprocessing side by side."
    )
    parser.add_argument("--cases", default=None,
                        help="comma-separated cases (default: all of " + ",".join(all_cases) + ")")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per case (default 5)")
    parser.add_argument("--n", type=int, default=None,
                        help="operations per rep, for both sides (default: each driver's own)")
    parser.add_argument("--python-only", action="store_true", help="skip the Rust driver")
    parser.add_argument("--rust-bin", default=None, metavar="PATH",
                        help="a prebuilt driver binary instead of cargo run")
    parser.add_argument("--procspawn-bin", default=None, metavar="PATH",
                        help="also run the cases the procspawn driver (bench/procspawn) has, "
                             "from this prebuilt binary")
    parser.add_argument("--start-methods", default=None,
                        help="comma-separated Python start methods for every case "
                             "(default: all three for spawn, fork for the rest)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the ratios as a bar chart (needs matplotlib)")
    parser.add_argument("--markdown", default=None, metavar="MD",
                        help="also write the table as Markdown")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds allowed for one driver run (default 1800)")
    args = parser.parse_args(argv)

    if args.reps < 1:
        parser.error("--reps must be at least 1")
    cases = all_cases if not args.cases else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in all_cases]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(all_cases)}")
    forced = None
    if args.start_methods:
        forced = [m.strip() for m in args.start_methods.split(",") if m.strip()]
        bad = [m for m in forced if m not in mp_bench.START_METHODS]
        if bad:
            parser.error(f"unknown start method(s) {', '.join(bad)}")
    if args.rust_bin and not os.path.exists(args.rust_bin):
        parser.error(f"--rust-bin {args.rust_bin}: no such file")
    if args.procspawn_bin and not os.path.exists(args.procspawn_bin):
        parser.error(f"--procspawn-bin {args.procspawn_bin}: no such file")

    runner = Runner(args)
    runner.build_rust()
    rows = []
    mem_rows = []
    used_methods = []  # the time table's
    mem_methods = []
    for case in cases:
        memory = case in MEMORY_CASES
        if case in SUPERVISOR_CASES:
            methods = ["supervisord"]
        elif forced:
            methods = forced
        elif case == "spawn" or memory:
            methods = list(mp_bench.START_METHODS)
        else:
            methods = ["fork"]
        for m in methods:
            used = mem_methods if memory else used_methods
            if m not in used:
                used.append(m)
        row = {"case": case, "rust": runner.rust(case), "python": {}, "notes": []}
        if memory:
            for m in methods:
                row["python"][m] = runner.python(case, m, python_n(args, case, m, row["rust"]))
            mem_rows.append(row)
            continue
        if not isinstance(row["rust"], dict) and row["rust"] != "skipped":
            row["notes"].append(f"rust n/a ({row['rust']})")
        for floor_case in [] if args.python_only else FLOORS.get(case, []):
            floor = runner.rust(floor_case)
            if isinstance(floor, dict):
                row["notes"].append(
                    f"rust {floor_case} {fmt_us(floor['per_op_us'])} us, "
                    f"{case}/{floor_case} {ratio(row['rust'], floor)}"
                )
            else:
                row["notes"].append(f"{floor_case} n/a ({floor})")
        ref_case = REFERENCES.get(case)
        if ref_case and not args.python_only:
            ref = runner.rust(ref_case)
            if isinstance(ref, dict):
                row["notes"].append(
                    f"rust {ref_case} {fmt_us(ref['per_op_us'])} us, "
                    f"{case}/{ref_case} {ratio(row['rust'], ref)}"
                )
            else:
                row["notes"].append(f"{ref_case} n/a ({ref})")
        row["procspawn"] = runner.procspawn(case, row["rust"])
        if isinstance(row["procspawn"], str):
            row["notes"].append(f"procspawn n/a ({row['procspawn']})")
        peer = PROCSPAWN_PEERS.get(case)
        if peer and isinstance(row["procspawn"], dict) and not args.python_only:
            peer_line = runner.rust(peer)
            if isinstance(peer_line, dict):
                row["notes"].append(
                    f"rust {peer} {fmt_us(peer_line['per_op_us'])} us, "
                    f"procspawn/{peer} {ratio(row['procspawn'], peer_line)}"
                )
            else:
                row["notes"].append(f"{peer} n/a ({peer_line})")
        for m in methods:
            res = runner.python(case, m, python_n(args, case, m, row["rust"]))
            row["python"][m] = res
            if not isinstance(res, dict):
                row["notes"].append(f"python-{m} n/a ({res})")
        rows.append(row)

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        for raw in runner.raw:
            f.write(raw + "\n")

    order = [m for m in mp_bench.START_METHODS + PSEUDO_METHODS if m in used_methods]
    mem_order = [m for m in mp_bench.START_METHODS if m in mem_methods]
    with_procspawn = bool(args.procspawn_bin)
    if rows:
        print_table(rows, order, with_procspawn)
    if mem_rows:
        if rows:
            print()
        print_memory_table(mem_rows, mem_order)
    print(f"raw lines: {os.path.relpath(RESULTS, os.getcwd())}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            if rows:
                f.write(markdown_table(rows, order, with_procspawn))
            if mem_rows:
                f.write(("\n" if rows else "") + markdown_memory_table(mem_rows, mem_order))
        print(f"markdown table: {args.markdown}")
    if args.plot and plot(rows, order, args.plot):
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
