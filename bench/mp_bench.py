#!/usr/bin/env python3
"""Python multiprocessing side of the tokio-multiprocessing benchmarks.

Usage:
    python3 bench/mp_bench.py CASE [--n N] [--reps R] [--start-method M]
    python3 bench/mp_bench.py all  [--n N] [--reps R] [--start-method M]
    python3 bench/mp_bench.py list

Each case is run R times; one JSON line is printed per case (and, for
``spawn`` without ``--start-method``, one line per start method), in the
same shape as the Rust driver ``cargo run --release --example bench``:

    {"case":"pipe_rtt","impl":"python-fork","n":10000,"reps":5,
     "per_op_us":12.8986,"ops_per_s":77527.6,"min_per_op_us":..,"max_per_op_us":..}

The memory case ``pool_idle_rss`` prints memory instead of times (and,
like ``spawn``, one line per start method without ``--start-method``):

    {"case":"pool_idle_rss","impl":"python-fork","n":100,"reps":5,"workers":2,
     "worker_rss_kib":..,"worker_pss_kib":..}

``per_op_us`` is the median over the reps of elapsed/n. Everything that is
not the operation being measured (starting helper processes, creating a
pool, warming it up) happens outside the timed region. Time is taken with
``time.perf_counter``, which on Linux reads CLOCK_MONOTONIC and so can be
compared between processes on one machine.

Every function a child runs is defined at module level, so the cases work
under all three start methods. The default start method is ``fork`` for
every case but ``spawn`` and ``pool_idle_rss``, which measure each method
in turn.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time

START_METHODS = ("fork", "forkserver", "spawn")

# ---------------------------------------------------------------------------
# Child-side functions (module level so spawn/forkserver can import them).
# ---------------------------------------------------------------------------


def _empty():
    pass


def _identity(x):
    return x


def _pipe_reader(conn):
    # Seed 001's reader: receive until 'DONE'. It says it is up first, so
    # that the child's start-up stays out of the timed region.
    conn.send("ready")
    while True:
        if conn.recv() == "DONE":
            break


def _pipe_echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg)


def _queue_producer(q, n, go, report):
    go.wait()
    t0 = time.perf_counter()
    for i in range(n):
        q.put(i)
    q.put(None)
    report.put(("start", t0))


def _queue_consumer(q, ready, report):
    ready.set()
    while q.get() is not None:
        pass
    report.put(("end", time.perf_counter()))


def _queue_echo(q_in, q_out):
    while True:
        item = q_in.get()
        if item is None:
            break
        q_out.put(item)


def _lock_loop(lock, n, barrier, report):
    if barrier is not None:
        barrier.wait()
    acquire = lock.acquire
    release = lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    t1 = time.perf_counter()
    report.send((t0, t1))
    report.close()


# ---------------------------------------------------------------------------
# Cases. Each takes (ctx, n, reps) and returns a list of per-rep elapsed
# seconds for `ops` operations, plus `ops` (usually n).
# ---------------------------------------------------------------------------


def _log_child(q, n):
    """Logs n records through a QueueHandler, as Python's logging cookbook
    has a child send its records to the parent."""
    import logging
    import logging.handlers

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(logging.INFO)
    log = logging.getLogger("bench_log")
    for i in range(n):
        log.info("event", extra={"i": i, "kind": "bench"})


class _Count:
    """A logging handler's stand-in that formats each record to a sink and
    counts it."""

    def __init__(self):
        import io
        import logging

        self.n = 0
        self.sink = io.StringIO()
        self.formatter = logging.Formatter(
            "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"
        )

    def handle(self, record):
        self.sink.write(self.formatter.format(record))
        self.sink.seek(0)
        self.sink.truncate()
        self.n += 1


def case_log_forward(ctx, n, reps):
    # The cookbook's way: a QueueHandler in the child, a QueueListener in
    # the parent, formatting each record. Timed from the child's start until
    # the listener has handled every record (the multiprocessing queue is
    # unbounded: nothing is dropped, and the child never waits).
    import logging.handlers

    times = []
    for _ in range(reps):
        q = ctx.Queue()
        counter = _Count()
        listener = logging.handlers.QueueListener(q, counter)
        listener.start()
        t0 = time.perf_counter()
        p = ctx.Process(target=_log_child, args=(q, n))
        p.start()
        while counter.n < n:
            time.sleep(0.001)
        times.append(time.perf_counter() - t0)
        p.join()
        listener.stop()
    return times, n


def case_spawn(ctx, n, reps):
    # Warm up: forkserver starts its server on first use; spawn and
    # forkserver import this module once in the server/first child.
    p = ctx.Process(target=_empty)
    p.start()
    p.join()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            p = ctx.Process(target=_empty)
            p.start()
            p.join()
        times.append(time.perf_counter() - t0)
    return times, n


def case_pipe_oneway(ctx, n, reps):
    # Seed 001: timed from the first send until the reader has been joined.
    times = []
    for _ in range(reps):
        p_output, p_input = ctx.Pipe()
        reader = ctx.Process(target=_pipe_reader, args=(p_output,), daemon=True)
        reader.start()
        p_output.close()
        p_input.recv()  # "ready"
        send = p_input.send
        t0 = time.perf_counter()
        for i in range(n):
            send(i)
        send("DONE")
        p_input.close()
        reader.join()
        times.append(time.perf_counter() - t0)
    return times, n


def case_pipe_rtt(ctx, n, reps):
    parent, child = ctx.Pipe()
    echo = ctx.Process(target=_pipe_echo, args=(child,), daemon=True)
    echo.start()
    child.close()
    send, recv = parent.send, parent.recv
    send(-1)  # warm-up: the child is running before the clock starts
    recv()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n):
            send(i)
            recv()
        times.append(time.perf_counter() - t0)
    send(None)
    echo.join()
    parent.close()
    return times, n


def case_queue_oneway(ctx, n, reps):
    # Timed from the producer's first put until the consumer has got the
    # last item; both instants are read in the children.
    times = []
    for _ in range(reps):
        q = ctx.Queue()
        report = ctx.Queue()
        go, ready = ctx.Event(), ctx.Event()
        producer = ctx.Process(target=_queue_producer, args=(q, n, go, report))
        consumer = ctx.Process(target=_queue_consumer, args=(q, ready, report))
        consumer.start()
        producer.start()
        ready.wait()
        go.set()
        marks = dict(report.get() for _ in range(2))
        producer.join()
        consumer.join()
        times.append(marks["end"] - marks["start"])
    return times, n


def case_queue_rtt(ctx, n, reps):
    q1, q2 = ctx.Queue(), ctx.Queue()
    echo = ctx.Process(target=_queue_echo, args=(q1, q2), daemon=True)
    echo.start()
    put, get = q1.put, q2.get
    put(-1)  # warm-up
    get()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n):
            put(i)
            get()
        times.append(time.perf_counter() - t0)
    put(None)
    echo.join()
    return times, n


def case_lock_uncontended(ctx, n, reps):
    times = []
    for _ in range(reps):
        lock = ctx.Lock()
        recv_end, send_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_lock_loop, args=(lock, n, None, send_end))
        p.start()
        send_end.close()
        t0, t1 = recv_end.recv()
        p.join()
        recv_end.close()
        times.append(t1 - t0)
    return times, n


def case_lock_contended(ctx, n, reps):
    # Two children, n/2 acquire+release each, on one Lock; they meet at a
    # barrier, and the time runs from the first child's start to the last
    # child's end.
    half = max(1, n // 2)
    times = []
    for _ in range(reps):
        lock = ctx.Lock()
        barrier = ctx.Barrier(2)
        procs, ends = [], []
        for _ in range(2):
            recv_end, send_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_lock_loop, args=(lock, half, barrier, send_end))
            p.start()
            send_end.close()
            procs.append(p)
            ends.append(recv_end)
        marks = [r.recv() for r in ends]
        for p in procs:
            p.join()
        for r in ends:
            r.close()
        times.append(max(t1 for _, t1 in marks) - min(t0 for t0, _ in marks))
    return times, 2 * half


def _value_incr_loop(value, n, barrier, report):
    barrier.wait()
    lock = value.get_lock()
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            value.value += 1
    t1 = time.perf_counter()
    report.send((t0, t1))
    report.close()


def case_value_incr(ctx, n, reps):
    # Two children, n/2 increments each of one Value('Q') under its lock
    # (`with v.get_lock(): v.value += 1`, the documented idiom); timed
    # from the first child's start to the last child's end, as
    # lock_contended.
    half = max(1, n // 2)
    times = []
    for _ in range(reps):
        value = ctx.Value("Q", 0)
        barrier = ctx.Barrier(2)
        procs, ends = [], []
        for _ in range(2):
            recv_end, send_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_value_incr_loop, args=(value, half, barrier, send_end))
            p.start()
            send_end.close()
            procs.append(p)
            ends.append(recv_end)
        marks = [r.recv() for r in ends]
        for p in procs:
            p.join()
        for r in ends:
            r.close()
        if value.value != 2 * half:
            raise RuntimeError(f"the value is {value.value}, not {2 * half}")
        times.append(max(t1 for _, t1 in marks) - min(t0 for t0, _ in marks))
    return times, 2 * half


def _warm_pool(pool):
    # Make sure both workers are up and have run a task before timing.
    pool.map(_identity, range(1000), chunksize=1)


def _pool_case(run):
    def case(ctx, n, reps):
        times = []
        with ctx.Pool(2) as pool:
            _warm_pool(pool)
            for _ in range(reps):
                t0 = time.perf_counter()
                run(pool, n)
                times.append(time.perf_counter() - t0)
        return times, n

    return case


def _run_map_c1(pool, n):
    pool.map(_identity, range(n), chunksize=1)


def _run_map(pool, n):
    pool.map(_identity, range(n))


def _run_apply_seq(pool, n):
    apply = pool.apply
    for i in range(n):
        apply(_identity, (i,))


def _run_apply_async(pool, n):
    results = [pool.apply_async(_identity, (i,)) for i in range(n)]
    for r in results:
        r.get()


# ---------------------------------------------------------------------------
# Memory cases. Each takes (ctx, n, reps) and returns the fields of its line.
# ---------------------------------------------------------------------------


def _proc_kib(path, key):
    """The value, in KiB, of the line `key:   N kB` of a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_pss(pid):
    """VmRSS (status) and Pss (smaps_rollup) of a live process in KiB, or None."""
    rss = _proc_kib(f"/proc/{pid}/status", "VmRSS")
    pss = _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")
    if rss is None or pss is None:
        return None
    return rss, pss


def _median_kib(values):
    return round(statistics.median(values)) if values else None


def _forkserver_pid():
    # Private, but the only way to name the server of the forkserver method.
    try:
        from multiprocessing import forkserver
        return forkserver._forkserver._forkserver_pid
    except (ImportError, AttributeError):
        return None


def case_pool_idle_rss(ctx, n, reps):
    # Pool(2), a map of n trivial tasks, 1.5 s of rest (as long as the Rust
    # side rests before it measures an idle worker), then the memory of
    # each worker (and of the fork server under forkserver). A new pool per
    # rep; the medians are over every worker of every rep.
    rss, pss, fs_rss, fs_pss = [], [], [], []
    workers = 0
    for _ in range(reps):
        with ctx.Pool(2) as pool:
            pool.map(_identity, range(n))
            time.sleep(1.5)
            # Pool keeps its worker processes in _pool.
            found = [m for m in (_rss_pss(p.pid) for p in pool._pool) if m is not None]
            server = _forkserver_pid() if ctx.get_start_method() == "forkserver" else None
            server_mem = _rss_pss(server) if server else None
        if len(found) != 2:
            raise RuntimeError(f"measured {len(found)} pool workers, expected 2")
        workers = len(found)
        rss += [r for r, _ in found]
        pss += [p for _, p in found]
        if server_mem:
            fs_rss.append(server_mem[0])
            fs_pss.append(server_mem[1])
    fields = {
        "workers": workers,
        "worker_rss_kib": _median_kib(rss),
        "worker_pss_kib": _median_kib(pss),
    }
    if fs_rss:
        fields["fork_server_rss_kib"] = _median_kib(fs_rss)
        fields["fork_server_pss_kib"] = _median_kib(fs_pss)
    return fields


# Cases that report memory, not time; without --start-method they run
# under every start method, as spawn does.
MEMORY_CASES = {"pool_idle_rss"}

# name -> (function, default n, or a dict start method -> default n)
CASES = {
    "spawn": (case_spawn, {"fork": 200, "forkserver": 100, "spawn": 50}),
    # The seed program (and the design's reference figure) uses 10**6.
    "pipe_oneway": (case_pipe_oneway, 10**5),
    "pipe_rtt": (case_pipe_rtt, 10**4),
    "queue_oneway": (case_queue_oneway, 10**5),
    "queue_rtt": (case_queue_rtt, 10**4),
    "lock_uncontended": (case_lock_uncontended, 10**6),
    "lock_contended": (case_lock_contended, 10**6),
    "value_incr": (case_value_incr, 10**6),
    "pool_map_c1": (_pool_case(_run_map_c1), 10**5),
    "pool_map": (_pool_case(_run_map), 10**5),
    "pool_apply_seq": (_pool_case(_run_apply_seq), 2000),
    "pool_apply_async": (_pool_case(_run_apply_async), 10**4),
    "pool_idle_rss": (case_pool_idle_rss, 100),
    "log_forward": (case_log_forward, 10**5),
}


def default_n(case, method):
    d = CASES[case][1]
    return d[method] if isinstance(d, dict) else d


def run_case(case, method, n, reps):
    func = CASES[case][0]
    ctx = multiprocessing.get_context(method)
    if n is None:
        n = default_n(case, method)
    if case in MEMORY_CASES:
        line = {"case": case, "impl": "python-" + method, "n": n, "reps": reps}
        line.update(func(ctx, n, reps))
        print(json.dumps(line, separators=(",", ":")), flush=True)
        return
    times, ops = func(ctx, n, reps)
    per_op = sorted(t / ops * 1e6 for t in times)
    median = statistics.median(per_op)
    line = {
        "case": case,
        "impl": "python-" + method,
        "n": ops,
        "reps": reps,
        "per_op_us": round(median, 4),
        "ops_per_s": round(1e6 / median, 1) if median > 0 else None,
        "min_per_op_us": round(per_op[0], 4),
        "max_per_op_us": round(per_op[-1], 4),
    }
    print(json.dumps(line, separators=(",", ":")), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Python multiprocessing benchmarks, one JSON line per case."
    )
    parser.add_argument("case", help="a case name, 'all' or 'list'")
    parser.add_argument("--n", type=int, default=None, help="operations per rep")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median is reported)")
    parser.add_argument(
        "--start-method",
        choices=START_METHODS,
        default=None,
        help="default: fork; for 'spawn' and 'pool_idle_rss', every method in turn",
    )
    args = parser.parse_args(argv)

    if args.case == "list":
        for name in CASES:
            print(name)
        return 0
    if args.case == "all":
        cases = list(CASES)
    elif args.case in CASES:
        cases = [args.case]
    else:
        print(f"unknown case {args.case!r}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.n is not None and args.n < 1:
        parser.error("--n must be at least 1")

    for case in cases:
        if args.start_method is not None:
            methods = [args.start_method]
        elif case == "spawn" or case in MEMORY_CASES:
            methods = list(START_METHODS)
        else:
            methods = ["fork"]
        for method in methods:
            run_case(case, method, args.n, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
