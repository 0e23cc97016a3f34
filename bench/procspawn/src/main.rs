//! The cases of `examples/bench.rs` that procspawn can run the same way,
//! printing the same JSON line per case (`"impl": "procspawn"`).
//!
//! ```text
//! cargo build --release            # in bench/procspawn
//! target/release/procspawn-bench spawn [--n 200] [--reps 5]
//! target/release/procspawn-bench all | list
//! ```
//!
//! `bench/compare.py --procspawn-bin PATH` runs it beside the other two
//! sides. A case not listed here exits with status 2, which compare.py
//! shows as "-".

use std::time::{Duration, Instant};

use procspawn::Pool;

struct Case {
    name: &'static str,
    default_n: u64,
    about: &'static str,
    run: fn(u64) -> Result<Duration, String>,
}

const CASES: &[Case] = &[
    Case {
        name: "spawn",
        default_n: 200,
        about: "procspawn::spawn of an empty function, then join (re-exec per child)",
        run: spawn,
    },
    Case {
        name: "pool_apply_seq",
        default_n: 2_000,
        about: "Pool::new(2).spawn of a trivial task, joined one after another",
        run: pool_apply_seq,
    },
    Case {
        name: "pool_apply_async",
        default_n: 10_000,
        about: "Pool::new(2).spawn of n trivial tasks, then every handle joined",
        run: pool_apply_async,
    },
];

fn empty(_: ()) {}

fn identity(x: u64) -> u64 {
    x
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn spawn(n: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    for _ in 0..n {
        procspawn::spawn((), empty).join().map_err(err)?;
    }
    Ok(t0.elapsed())
}

/// A two-worker pool warmed up with 1000 tasks outside the timed part, as
/// the other two drivers do.
fn warm_pool() -> Result<Pool, String> {
    let pool = Pool::new(2).map_err(err)?;
    let handles: Vec<_> = (0..1000).map(|i| pool.spawn(i, identity)).collect();
    for h in handles {
        h.join().map_err(err)?;
    }
    Ok(pool)
}

fn pool_apply_seq(n: u64) -> Result<Duration, String> {
    let pool = warm_pool()?;
    let t0 = Instant::now();
    for i in 0..n {
        let back = pool.spawn(i, identity).join().map_err(err)?;
        if back != i {
            return Err(format!("sent {i}, got {back} back"));
        }
    }
    let took = t0.elapsed();
    pool.kill();
    Ok(took)
}

/// The soft limit on open descriptors, from /proc/self/limits.
fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn pool_apply_async(n: u64) -> Result<Duration, String> {
    // Each call in flight holds two ipc channels, four descriptors, until
    // it is joined; past the limit procspawn panics in `Pool::spawn`.
    if let Some(limit) = descriptor_limit() {
        if 4 * n + 256 > limit {
            return Err(format!(
                "{n} calls in flight need ~{} fds (4 each); the limit is {limit}",
                4 * n + 256
            ));
        }
    }
    let pool = warm_pool()?;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.spawn(i, identity)).collect();
    for h in handles {
        h.join().map_err(err)?;
    }
    let took = t0.elapsed();
    pool.kill();
    Ok(took)
}

fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn run_case(case: &Case, n: Option<u64>, reps: u32) -> Result<(), String> {
    let n = n.unwrap_or(case.default_n).max(1);
    (case.run)(n.min(10))?; // warm-up, as in examples/bench.rs
    let mut per_op_us = Vec::new();
    for _ in 0..reps {
        let took = (case.run)(n)?;
        per_op_us.push(took.as_secs_f64() * 1e6 / n as f64);
    }
    per_op_us.sort_by(f64::total_cmp);
    let med = median(&per_op_us);
    let line = serde_json::json!({
        "case": case.name,
        "impl": "procspawn",
        "n": n,
        "reps": reps,
        "per_op_us": round3(med),
        "ops_per_s": (1e6 / med).round(),
        "min_per_op_us": round3(per_op_us[0]),
        "max_per_op_us": round3(per_op_us[per_op_us.len() - 1]),
    });
    println!("{line}");
    Ok(())
}

fn usage() -> ! {
    eprintln!("usage: procspawn-bench CASE|all|list [--n N] [--reps R]");
    std::process::exit(2);
}

fn main() {
    // First thing: in a child started by procspawn this runs the child's
    // function and exits.
    procspawn::init();

    let mut args = std::env::args().skip(1);
    let Some(which) = args.next() else { usage() };
    let (mut n, mut reps) = (None, 5u32);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--n" => n = Some(value.parse().unwrap_or_else(|_| usage())),
            "--reps" => reps = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if which == "list" {
        for c in CASES {
            println!("{:<16} n={:<8} {}", c.name, c.default_n, c.about);
        }
        return;
    }
    let selected: Vec<&Case> = if which == "all" {
        CASES.iter().collect()
    } else {
        match CASES.iter().find(|c| c.name == which) {
            Some(c) => vec![c],
            None => {
                eprintln!("procspawn-bench: no case {which:?} here; `list` names them");
                std::process::exit(2);
            }
        }
    };
    for case in selected {
        if let Err(e) = run_case(case, n, reps.max(1)) {
            eprintln!("procspawn-bench: {}: {e}", case.name);
            std::process::exit(1);
        }
    }
}
