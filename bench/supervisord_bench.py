#!/usr/bin/env python3
"""supervisord side of the supervisor benchmarks: the same three cases as
the Rust driver's ``sup_*``, run by supervisord (``pip install supervisor``)
on programs written in Python.

Usage:
    python3 bench/supervisord_bench.py CASE [--n N] [--reps R]
    python3 bench/supervisord_bench.py list

Cases (one JSON line each, in the shape of the other drivers, with
``"impl":"supervisord-<version>"``):

- ``sup_restart``: SIGKILL the supervised program, until its replacement
  has run its first line. One op is one restart.
- ``sup_start_100``: ``startAllProcesses`` on n programs, until every one
  has run its first line. One op is one program.
- ``sup_shutdown_100``: ``stopAllProcesses(wait=True)`` on n running
  programs (each ends on SIGTERM, Python's default). One op is one program.

supervisord has no readiness protocol: a program with ``startsecs=0`` is
RUNNING once spawned. So that both sides time the same thing, each program
sends one datagram, with its pid, to a socket of this script as its first
act; "ready" here is that datagram, as it is ``mp::notify_ready()`` on the
Rust side. The programs are Python (an interpreter starts for each), as a
supervisord user's would be.

Exit status 3 when supervisord is not installed.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import xmlrpc.client

try:
    import supervisor
    from importlib.metadata import version as _version
    from supervisor.xmlrpc import SupervisorTransport
except ImportError:  # pragma: no cover - depends on the machine
    supervisor = None

CASES = {"sup_restart": 200, "sup_start_100": 100, "sup_shutdown_100": 100}

CHILD = textwrap.dedent(
    """\
    import os, signal, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(str(os.getpid()).encode(), sys.argv[1])
    signal.pause()
    """
)


class Supervisord:
    """A supervisord of `programs` copies of the child program, in a
    temporary directory, with an XML-RPC client."""

    def __init__(self, programs, autostart, autorestart):
        self.dir = tempfile.mkdtemp(prefix="sdbench-")
        self.ready_path = os.path.join(self.dir, "ready")
        self.ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ready.bind(self.ready_path)
        child = os.path.join(self.dir, "child.py")
        with open(child, "w") as f:
            f.write(CHILD)
        sock = os.path.join(self.dir, "sv.sock")
        conf = os.path.join(self.dir, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                [unix_http_server]
                file={sock}
                [supervisord]
                nodaemon=true
                logfile={self.dir}/supervisord.log
                pidfile={self.dir}/supervisord.pid
                childlogdir={self.dir}
                loglevel=warn
                [rpcinterface:supervisor]
                supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
                """))
            for i in range(programs):
                f.write(textwrap.dedent(f"""\
                    [program:c{i}]
                    command={sys.executable} {child} {self.ready_path}
                    autostart={'true' if autostart else 'false'}
                    autorestart={'true' if autorestart else 'false'}
                    startsecs=0
                    startretries=1000
                    stopsignal=TERM
                    stopwaitsecs=10
                    stdout_logfile=NONE
                    stderr_logfile=NONE
                    """))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", conf],
            stdin=subprocess.DEVNULL,
            # It logs to its log file too; its warnings about running as
            # root would only clutter the table.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            # A new client per try: one whose first request failed (the
            # socket did not exist yet) cannot send another.
            transport = SupervisorTransport(None, None, "unix://" + sock)
            self.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
            try:
                if self.rpc.getState()["statename"] == "RUNNING":
                    break
            except (OSError, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("supervisord did not come up within 30 s")
            time.sleep(0.01)

    def ready_pid(self, timeout=30):
        self.ready.settimeout(timeout)
        data, _ = self.ready.recvfrom(64)
        return int(data)

    def close(self):
        try:
            self.rpc.stopAllProcesses(True)
        except (OSError, xmlrpc.client.Error):
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ready.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def case_restart(n, reps):
    sv = Supervisord(1, autostart=True, autorestart=True)
    try:
        pid = sv.ready_pid()
        times = []
        for _ in range(reps):
            took = 0.0
            for _ in range(n):
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                new = sv.ready_pid()
                while new == pid:
                    new = sv.ready_pid()
                took += time.perf_counter() - t0
                pid = new
            times.append(took)
        return times
    finally:
        sv.close()


def case_start_stop(n, reps, timed):
    sv = Supervisord(n, autostart=False, autorestart=False)
    try:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sv.rpc.startAllProcesses(False)
            pids = {sv.ready_pid() for _ in range(n)}
            started = time.perf_counter() - t0
            if len(pids) != n:
                raise RuntimeError(f"{len(pids)} distinct programs ready, want {n}")
            t0 = time.perf_counter()
            sv.rpc.stopAllProcesses(True)
            stopped = time.perf_counter() - t0
            times.append(started if timed == "start" else stopped)
        return times
    finally:
        sv.close()


def run_case(case, n, reps):
    if n is None:
        n = CASES[case]
    if case == "sup_restart":
        times = case_restart(n, reps)
    elif case == "sup_start_100":
        times = case_start_stop(n, reps, "start")
    else:
        times = case_start_stop(n, reps, "stop")
    per_op = sorted(t / n * 1e6 for t in times)
    median = statistics.median(per_op)
    line = {
        "case": case,
        "impl": "supervisord-" + _version("supervisor"),
        "n": n,
        "reps": reps,
        "per_op_us": round(median, 4),
        "ops_per_s": round(1e6 / median, 1) if median > 0 else None,
        "min_per_op_us": round(per_op[0], 4),
        "max_per_op_us": round(per_op[-1], 4),
    }
    print(json.dumps(line, separators=(",", ":")), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="a case, or `list`")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.case == "list":
        for name, n in CASES.items():
            print(f"{name:<18} n={n}")
        return 0
    if args.case not in CASES:
        print(f"unknown case {args.case!r}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if supervisor is None:
        print("supervisord is not installed (pip install supervisor)", file=sys.stderr)
        return 3
    run_case(args.case, args.n, max(1, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
