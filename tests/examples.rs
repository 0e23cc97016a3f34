//! Runs every example and checks what it prints. Each run is under a
//! watchdog; `cargo test` builds the examples before it runs this.

#[path = "common/run.rs"]
mod run;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use run::{Output, example, run_with_watchdog};

const LIMIT: Duration = Duration::from_secs(60);

fn run_example(name: &str) -> Output {
    let out =
        run_with_watchdog(Command::new(example(name)), LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{name} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

#[test]
fn process_reference_prints_the_reference_session() {
    let out = run_example("process_reference");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "<Process(Process-1, initial)> false",
            "<Process(Process-1, started)> true",
            "<Process(Process-1, stopped[SIGTERM])> false",
            "true",
        ],
        "stdout:\n{}",
        out.stdout
    );
}

#[test]
fn process_basics_says_hello_and_shows_pids() {
    let out = run_example("process_basics");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "stdout:\n{}", out.stdout);
    assert_eq!(lines[0], "hello bob");
    let parent: u32 = lines[1]
        .strip_prefix("Parent process ")
        .and_then(|s| s.strip_suffix('.'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("parent line: {}", lines[1]));
    assert_eq!(lines[2], "Child process will start.");
    let child: u32 = lines[3]
        .strip_prefix("Run child process test (")
        .and_then(|s| s.strip_suffix(")..."))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("child line: {}", lines[3]));
    assert_ne!(parent, child, "the child runs in another process");
    assert_eq!(lines[4], "Child process end.");
}

#[test]
fn countdown_counts_down_twice_in_parallel() {
    let out = run_example("countdown");
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for line in out.stdout.lines() {
        let n: u32 = line
            .strip_prefix("Count value ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        *seen.entry(n).or_default() += 1;
    }
    for n in 1..=20 {
        let want = if n <= 10 { 2 } else { 1 };
        assert_eq!(
            seen.get(&n),
            Some(&want),
            "Count value {n}: stdout:\n{}",
            out.stdout
        );
    }
    assert_eq!(seen.len(), 20);
}

#[test]
fn process_set_prints_results_as_workers_finish() {
    let out = run_example("process_set");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "started 4 workers",
            "worker-1 finished: 1",
            "worker-2 finished: 4",
            "worker-3 finished: 9",
            "worker-4 finished: 16",
            "all done",
        ],
        "stdout:\n{}",
        out.stdout
    );
}

#[test]
fn wait_many_reports_children_in_finishing_order() {
    let out = run_example("wait_many");
    let slept: Vec<u64> = out
        .stdout
        .lines()
        .map(|line| {
            let rest = line
                .split("(slept ")
                .nth(1)
                .unwrap_or_else(|| panic!("line {line:?}"));
            rest.split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("line {line:?}"))
        })
        .collect();
    assert_eq!(slept.len(), 8, "stdout:\n{}", out.stdout);
    // Each is reported as it finishes: the times it gives never go back.
    let finished: Vec<u64> = out
        .stdout
        .lines()
        .filter_map(|line| {
            line.split("finished after ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(finished.len(), 8, "stdout:\n{}", out.stdout);
    assert!(
        finished.windows(2).all(|w| w[0] <= w[1]),
        "reported in the order they finished:\n{}",
        out.stdout
    );
    // Where a start takes a millisecond, that is the order of the sleeps
    // (under Wine, a start takes longer than the sleeps differ).
    if cfg!(unix) {
        let mut sorted = slept.clone();
        sorted.sort_unstable();
        assert_eq!(
            slept, sorted,
            "finishing order follows the sleeps:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.lines().all(|l| l.ends_with("exit code Some(0)")),
        "{}",
        out.stdout
    );
}

#[test]
fn pipe_throughput_times_three_counts() {
    let out = run_example("pipe_throughput");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "stdout:\n{}", out.stdout);
    for (line, count) in lines.iter().zip(["10000", "100000", "1000000"]) {
        let secs: f64 = line
            .strip_prefix(&format!("Sending {count} numbers to Pipe() took "))
            .and_then(|s| s.strip_suffix(" seconds"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert!(secs > 0.0 && secs < 60.0, "{line}");
    }
}

/// The cases that measure Linux itself, which the Windows build does not
/// list.
const LINUX_ONLY_BENCH_CASES: [&str; 5] = [
    "floor_fork",
    "floor_warm",
    "pipe_rtt_floor",
    "sup_restart",
    "pool_idle_rss",
];

#[test]
fn bench_lists_its_cases_and_runs_one() {
    let mut cmd = Command::new(example("bench"));
    cmd.arg("list");
    let out = run_with_watchdog(cmd, LIMIT).expect("bench list");
    assert!(out.status.success());
    let listed = |case: &str| {
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(case))
    };
    for case in ["spawn", "floor_spawn", "pipe_oneway", "pipe_rtt"] {
        assert!(listed(case), "{case} listed:\n{}", out.stdout);
    }
    for case in LINUX_ONLY_BENCH_CASES {
        assert_eq!(
            listed(case),
            cfg!(unix),
            "{case} on this platform:\n{}",
            out.stdout
        );
    }
    let mut cmd = Command::new(example("bench"));
    cmd.args(["spawn", "--n", "5", "--reps", "2"]);
    let out = run_with_watchdog(cmd, LIMIT).expect("bench spawn");
    assert!(out.status.success(), "{}", out.stderr);
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON line");
    assert_eq!(line["case"], "spawn");
    assert_eq!(line["n"], 5);
    assert!(
        line["per_op_us"].as_f64().is_some_and(|v| v > 0.0),
        "{line}"
    );

    for case in [
        "pipe_oneway",
        "pipe_rtt",
        "pipe_rtt_floor",
        "pool_map_c1",
        "pool_map",
        "pool_apply_seq",
        "pool_apply_async",
    ] {
        if LINUX_ONLY_BENCH_CASES.contains(&case) && cfg!(windows) {
            continue;
        }
        let mut cmd = Command::new(example("bench"));
        cmd.args([case, "--n", "200", "--reps", "1"]);
        let out = run_with_watchdog(cmd, LIMIT).expect("bench case");
        assert!(out.status.success(), "{case}: {}", out.stderr);
        let line: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON line");
        assert_eq!(line["case"], case);
        assert_eq!(line["n"], 200);
    }

    // The supervisor cases, the start from a #[tokio::main] program and
    // from a task, and the warm start's floor, small.
    for case in [
        "sup_restart",
        "sup_start_100",
        "sup_shutdown_100",
        "spawn_tokio_main",
        "spawn_task",
        "floor_warm",
        "pool_apply_seq_current_thread",
    ] {
        if LINUX_ONLY_BENCH_CASES.contains(&case) && cfg!(windows) {
            continue;
        }
        let mut cmd = Command::new(example("bench"));
        cmd.args([case, "--n", "5", "--reps", "1"]);
        let out = run_with_watchdog(cmd, LIMIT).expect("bench case");
        assert!(out.status.success(), "{case}: {}", out.stderr);
        let line: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON line");
        assert_eq!(line["case"], case);
        assert_eq!(line["n"], 5);
    }

    let mut cmd = Command::new(example("bench"));
    cmd.arg("no_such_case");
    let out = run_with_watchdog(cmd, LIMIT).expect("bench unknown");
    assert_eq!(out.status.code(), Some(2), "an unknown case is an error");
}

#[test]
fn whoami_prints_whole_lines_from_seven_processes() {
    let out = run_example("whoami");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "stdout:\n{}", out.stdout);
    assert!(
        lines[0].starts_with("function call: name:MainProcess, pid:"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("spawned child: name:Process-1, pid:"),
        "{}",
        lines[1]
    );
    let mut pids = std::collections::HashSet::new();
    let mut labels = Vec::new();
    for line in &lines {
        if *line == "Main process exit." {
            continue;
        }
        // Every other line is whole: "LABEL: name:NAME, pid:PID".
        let (label, rest) = line
            .split_once(": name:")
            .unwrap_or_else(|| panic!("torn line {line:?}"));
        let (_name, pid) = rest
            .split_once(", pid:")
            .unwrap_or_else(|| panic!("torn line {line:?}"));
        let pid: u32 = pid.parse().unwrap_or_else(|_| panic!("torn line {line:?}"));
        assert!(pids.insert(pid), "one line per process: {line}");
        labels.push(label.to_owned());
    }
    labels.sort();
    let mut want = vec!["function call".to_owned(), "spawned child".to_owned()];
    want.extend((0..5).map(|i| format!("run process {i}")));
    want.sort();
    assert_eq!(labels, want);
    assert_eq!(
        lines.iter().filter(|l| **l == "Main process exit.").count(),
        1
    );
}

#[test]
fn queue_hello_prints_the_list() {
    let out = run_example("queue_hello");
    assert_eq!(out.stdout, "[42, None, 'hello']\n");
}

#[test]
fn queue_reader_writer_passes_a_b_c_in_order() {
    let out = run_example("queue_reader_writer");
    let puts: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Put "))
        .collect();
    let gets: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Get "))
        .collect();
    assert_eq!(
        puts,
        [
            "Put A to queue...",
            "Put B to queue...",
            "Put C to queue..."
        ],
        "{}",
        out.stdout
    );
    assert_eq!(
        gets,
        [
            "Get A from queue.",
            "Get B from queue.",
            "Get C from queue."
        ],
        "{}",
        out.stdout
    );
    for who in ["Process to write: ", "Process to read: "] {
        assert_eq!(
            out.stdout.lines().filter(|l| l.starts_with(who)).count(),
            1,
            "{}",
            out.stdout
        );
    }
    // Each value is put before it is taken.
    let pos = |s: &str| out.stdout.find(s).unwrap();
    for v in ["A", "B", "C"] {
        assert!(
            pos(&format!("Put {v} ")) < pos(&format!("Get {v} ")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn lock_serial_runs_the_three_in_series() {
    let out = run_example("lock_serial");
    assert_eq!(out.stdout, "hello world 0\nhello world 1\nhello world 2\n");
}

#[test]
fn pool_map_prints_the_squares() {
    let out = run_example("pool_map");
    assert_eq!(out.stdout, "[1, 4, 9]\n", "stdout:\n{}", out.stdout);
}

#[test]
fn remote_pool_spreads_tasks_over_local_and_remote_workers() {
    let out = run_example("remote_pool");
    let stdout = &out.stdout;
    assert!(stdout.contains("2 remote workers joined"), "{stdout}");
    // 1^3 + ... + 40^3 = (40 * 41 / 2)^2.
    assert!(stdout.contains("sum of cubes 1..=40: 672400"), "{stdout}");
    let count = |kind: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(kind))
            .map(|l| {
                l.rsplit_once(": ").map_or(0, |(_, n)| {
                    n.trim_end_matches(" tasks").parse::<usize>().unwrap_or(0)
                })
            })
            .collect::<Vec<_>>()
    };
    let (remote, local) = (count("remote worker"), count("local worker"));
    assert_eq!(remote.len(), 2, "both remote workers ran tasks: {stdout}");
    assert!(remote.iter().all(|&n| n > 0), "{stdout}");
    assert_eq!(
        remote.iter().sum::<usize>() + local.iter().sum::<usize>(),
        40,
        "{stdout}"
    );
    // The standard library says "exit status" on Unix, "exit code" on
    // Windows.
    let exited = if cfg!(windows) {
        "a remote worker exited: exit code: 0"
    } else {
        "a remote worker exited: exit status: 0"
    };
    assert_eq!(
        stdout.matches(exited).count(),
        2,
        "the workers ended with the pool: {stdout}"
    );
}

#[test]
fn pool_apply_async_runs_five_tasks_on_four_workers() {
    let out = run_example("pool_apply_async");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "stdout:\n{}", out.stdout);
    let parent: u32 = lines[0]
        .strip_prefix("Parent process ")
        .and_then(|s| s.strip_suffix('.'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("parent line: {}", lines[0]));
    assert_eq!(lines[12], "All subprocesses done.");
    assert!(lines.contains(&"Waiting for all subprocesses done..."));
    let mut workers = std::collections::HashSet::new();
    for task in 0..5 {
        let run = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("Run task {task} (")))
            .and_then(|s| s.strip_suffix(")..."))
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no start line for task {task}:\n{}", out.stdout));
        assert_ne!(run, parent, "task {task} ran in the parent");
        workers.insert(run);
        let secs: f64 = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("Task {task} runs ")))
            .and_then(|s| s.strip_suffix(" seconds."))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no end line for task {task}:\n{}", out.stdout));
        assert!((0.0..3.5).contains(&secs), "task {task} ran {secs} s");
    }
    assert!(
        (1..=4).contains(&workers.len()),
        "{} workers for four slots",
        workers.len()
    );
}

/// Runs the `logs` example with `RUST_LOG` set to `filter` (unset: its
/// default, `info,logs=debug`).
fn run_logs(filter: Option<&str>) -> Output {
    let mut cmd = Command::new(example("logs"));
    match filter {
        Some(f) => cmd.env("RUST_LOG", f),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = run_with_watchdog(cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "logs failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// The pids the parent says it started, by child name, from its
/// `started a child process="worker-N" pid=P` lines.
fn started_children(stdout: &str) -> HashMap<String, u32> {
    stdout
        .lines()
        .filter(|l| l.contains("started a child") && !l.contains("child{"))
        .map(|l| {
            let name = l
                .split("process=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_else(|| panic!("line {l:?}"));
            let pid = l
                .split(" pid=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("line {l:?}"));
            (name.to_owned(), pid)
        })
        .collect()
}

/// The `step=K` of every line of child `name` (pid `pid`) that comes from
/// its `job{n=N}` span, in the order they were printed; panics on a line
/// of the child's span without its label in front.
fn steps_of(stdout: &str, name: &str, pid: u32, n: u32) -> Vec<u32> {
    let label = format!("child{{process=\"{name}\" pid={pid}}}:job{{n={n}}}: ");
    stdout
        .lines()
        .filter(|l| l.contains(&format!("job{{n={n}}}")))
        .map(|l| {
            assert!(
                l.contains(&label),
                "a line of {name} without its label {label:?}: {l:?}\nstdout:\n{stdout}"
            );
            l.split(" step=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no step in {l:?}"))
        })
        .collect()
}

// Needs the forwarding of a child's `tracing` events to its parent
// (issue 12): without it, no child line reaches the parent's output.
#[test]
fn logs_labels_each_childs_lines_in_order_and_filters_debug() {
    let out = run_logs(None);
    let parent = out
        .stdout
        .lines()
        .filter(|l| l.contains("the parent starts three children"))
        .count();
    assert_eq!(parent, 1, "the parent's own line:\n{}", out.stdout);
    let children = started_children(&out.stdout);
    assert_eq!(children.len(), 3, "stdout:\n{}", out.stdout);
    for n in 1..=3u32 {
        let name = format!("worker-{n}");
        let pid = children[&name];
        // Its four steps, in the order it logged them; step 2 is DEBUG,
        // let through by the default `logs=debug`.
        assert_eq!(
            steps_of(&out.stdout, &name, pid, n),
            [1, 2, 3, 4],
            "{name}'s steps:\n{}",
            out.stdout
        );
        let late = format!("child{{process=\"{name}\" pid={pid}}}:job{{n={n}}}: logs: step three");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains(" WARN ") && l.contains(&late)),
            "{name}'s WARN line:\n{}",
            out.stdout
        );
    }
    // The `chatty` target's DEBUG events are not let through.
    assert!(!out.stdout.contains("chatty"), "stdout:\n{}", out.stdout);
    // Every pool task's events, labelled by the worker that ran it.
    for what in ["squaring", "squared"] {
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.contains(&format!("logs: {what} ")))
            .collect();
        assert_eq!(lines.len(), 4, "{what} lines:\n{}", out.stdout);
        for l in lines {
            let label = l
                .split("child{process=\"")
                .nth(1)
                .unwrap_or_else(|| panic!("an unlabelled pool line {l:?}"));
            let pid: u32 = label
                .split(" pid=")
                .nth(1)
                .and_then(|s| s.split('}').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {l:?}"));
            assert!(
                !children.values().any(|&p| p == pid),
                "a pool line labelled as a process: {l:?}"
            );
        }
    }
    // DEBUG lines: only of the example's own target.
    for l in out.stdout.lines().filter(|l| l.contains(" DEBUG ")) {
        assert!(
            l.contains(" logs: "),
            "a DEBUG line the filter refuses: {l:?}"
        );
    }
}

// Needs the forwarding of issue 12, as the one above.
#[test]
fn logs_at_info_prints_no_debug_lines_from_anyone() {
    let out = run_logs(Some("info"));
    assert!(
        !out.stdout.contains(" DEBUG "),
        "DEBUG lines at RUST_LOG=info:\n{}",
        out.stdout
    );
    let children = started_children(&out.stdout);
    assert_eq!(children.len(), 3, "stdout:\n{}", out.stdout);
    for n in 1..=3u32 {
        let name = format!("worker-{n}");
        assert_eq!(
            steps_of(&out.stdout, &name, children[&name], n),
            [1, 3, 4],
            "{name}'s steps at INFO:\n{}",
            out.stdout
        );
    }
}

#[test]
fn shared_counter_prints_40000() {
    let out = run_example("shared_counter");
    assert_eq!(out.stdout, "40000\n", "stdout:\n{}", out.stdout);
}

#[test]
fn shared_memory_python_shares_a_block_with_python_by_name() {
    let out = run_example("shared_memory_python");
    if out.stdout.starts_with("skipped: python3") {
        eprintln!("{}", out.stdout.trim());
        return;
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout:\n{}", out.stdout);
    assert!(
        lines[0].starts_with("python read 100 numbers from psm_")
            && lines[0].ends_with("(408 bytes)"),
        "stdout:\n{}",
        out.stdout
    );
    assert_eq!(lines[1], "rust read the sum python wrote: 5050");
    assert!(
        !out.stderr.contains("leaked"),
        "python's resource tracker: {}",
        out.stderr
    );
}

/// `GET path` on `addr` (`host:port`) with a plain HTTP/1.0 request: the
/// answer's status line and its body.
#[cfg(windows)]
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default();
    (status.to_owned(), body.to_owned())
}

/// The body of `GET path`, which must answer `200`.
#[cfg(windows)]
fn http_get_ok(addr: &str, path: &str) -> String {
    let (status, body) = http_get(addr, path);
    assert!(status.contains(" 200 "), "{path}: {status}\n{body}");
    body
}

/// Example `name` started on port 0, its stdout read line by line on a
/// thread of its own: the child, the address it listens on, what it
/// printed before it, and the lines that follow.
#[cfg(windows)]
fn start_listening(
    name: &str,
) -> (
    std::process::Child,
    String,
    Vec<String>,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(example(name))
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut before = Vec::new();
    let addr = loop {
        let Ok(line) = lines.recv_timeout(LIMIT) else {
            let _ = child.kill();
            panic!("{name}: no address within {LIMIT:?}; printed {before:#?}");
        };
        if let Some(url) = line.strip_prefix("listening on http://") {
            break url.to_owned();
        }
        before.push(line);
    };
    (child, addr, before, lines)
}

/// `service_tree` on Windows: its children start in order, each ready
/// before the next (the sidecar through the named pipe its
/// `NOTIFY_SOCKET` names), the pool answers over HTTP, the sidecar's
/// output comes as events; and when the service is killed, its
/// supervised children end with it (their Job Objects close). Windows has
/// no `SIGTERM` to stop it gracefully from a test (Ctrl-C needs a console
/// the run under Wine does not have); the graceful stop is checked on
/// Linux, in `tests/supervisor/service_tree.rs`.
#[cfg(windows)]
#[test]
fn service_tree_serves_and_its_children_end_with_it() {
    let (mut service, addr, mut seen, lines) = start_listening("service_tree");
    // The events are printed by a task of their own, which may print the
    // last start-up ones just after the address.
    let is_start_up = |l: &String| {
        l.strip_prefix("event: service/")
            .is_some_and(|l| l.contains(": started") || l.contains(": ready"))
    };
    while seen.iter().filter(|l| is_start_up(l)).count() < 5 {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let order: Vec<String> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("event: service/"))
        .filter(|l| l.contains(": started") || l.contains(": ready"))
        .map(str::to_owned)
        .collect();
    let expected = [
        "jobs: started",
        "ticker: started",
        "ticker: ready",
        "sidecar: started",
        "sidecar: ready",
    ];
    let in_order =
        order.len() == expected.len() && order.iter().zip(expected).all(|(l, e)| l.starts_with(e));
    let square = http_get_ok(&addr, "/square/7");
    let children = http_get_ok(&addr, "/children");
    // The sidecar's first line, captured and printed as an event.
    let is_captured = |l: &str| l.contains("stdout: sidecar ready, heartbeat every");
    let mut captured = seen.iter().any(|l| is_captured(l));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !captured {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        captured = is_captured(&line);
        seen.push(line);
    }
    let pid_of = |name: &str| -> Option<u32> {
        let at = children.find(&format!("\"name\":\"{name}\""))?;
        let rest = &children[children[..at].rfind('{')?..];
        let pid = rest.split("\"pid\":").nth(1)?;
        pid.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let (ticker, sidecar) = (pid_of("ticker"), pid_of("sidecar"));
    service.kill().expect("kill the service");
    service.wait().expect("reaped");
    assert!(in_order, "start-up events: {order:?}\nprinted: {seen:#?}");
    assert!(square.contains("\"square\":49"), "/square/7: {square}");
    assert!(captured, "the sidecar's line as an event: {seen:#?}");
    let (Some(ticker), Some(sidecar)) = (ticker, sidecar) else {
        panic!("no pids in /children: {children}");
    };
    let t0 = std::time::Instant::now();
    while run::is_running(ticker) || run::is_running(sidecar) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the ticker ({ticker}) and the sidecar ({sidecar}) outlived the service"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `server` example on Windows: it answers `/primes/N` from its pool
/// and a bad `N` with 400. Its graceful stop (Ctrl-C) is checked on
/// Linux, in `tests/pool/server.rs`, by signals this run under Wine
/// cannot send.
#[cfg(windows)]
#[test]
fn server_answers_from_its_pool() {
    let (mut server, addr, before, _lines) = start_listening("server");
    assert!(before.is_empty(), "printed before its address: {before:?}");
    let primes = http_get_ok(&addr, "/primes/100");
    let (status_of_bad, _) = http_get(&addr, "/primes/ten");
    server.kill().expect("kill the server");
    server.wait().expect("reaped");
    assert!(primes.contains("\"primes\":25"), "/primes/100: {primes}");
    assert!(
        status_of_bad.contains(" 400 "),
        "/primes/ten: {status_of_bad}"
    );
}
