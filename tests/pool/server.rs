//! The `server` example: an axum server whose handlers count primes on a
//! shared `Pool`. Each case starts the example on an ephemeral port, sends
//! it concurrent requests from an HTTP client and checks every answer
//! against a sieve, checks bad input and a failing task, then stops it
//! with a signal while a request is in flight and checks that the request
//! is answered, the server exits with status 0 and none of its children
//! outlives it.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use libtest_mimic::Failed;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinSet;

use crate::common::{Case, case, ensure, run};

const T: Duration = Duration::from_secs(120);

/// Concurrent client tasks, and requests each sends one after another.
const CLIENTS: u64 = 8;
const PER_CLIENT: u64 = 8;

/// The `N` of the request that is in flight when the signal is sent: long
/// enough (about half a second in a debug build) to still be running.
const LONG_N: u64 = 1_500_000;

/// The largest `N` the server takes (`MAX_N` in the example).
const MAX_N: u64 = 10_000_000;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How a case stops the server.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM to the server, as a service manager does.
    Term,
    /// SIGINT to the server alone.
    Int,
    /// SIGINT to the server's whole process group, as Ctrl-C in a
    /// terminal does: the workers get it too.
    CtrlC,
}

struct Server {
    child: Child,
    pid: u32,
    base: String,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Server {
    /// Starts the example on port 0 and reads the address it prints.
    async fn start(own_group: bool) -> Result<Server, Failed> {
        let mut cmd = Command::new(run::example("server"));
        cmd.arg("0")
            .env("RUST_BACKTRACE", "0") // the `/panic` task's worker prints less
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("the server has no pid")?;
        let mut err = child.stderr.take().ok_or("stderr is piped")?;
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout is piped")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .map_err(|_| "the server printed no address within 30 s")??
            .ok_or("the server closed its stdout before printing its address")?;
        let base = first
            .strip_prefix("listening on ")
            .filter(|b| b.starts_with("http://127.0.0.1:"))
            .ok_or_else(|| format!("unexpected first line {first:?}"))?
            .to_owned();
        Ok(Server {
            child,
            pid,
            base,
            stdout,
            stderr,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `counts[n]` is the number of primes below `n`, for `n <= max`, by the
/// sieve of Eratosthenes (the server counts by trial division).
fn prime_counts(max: usize) -> Vec<u64> {
    let mut composite = vec![false; max + 1];
    let mut counts = vec![0; max + 1];
    let mut found = 0;
    for k in 0..=max {
        counts[k] = found;
        if k >= 2 && !composite[k] {
            found += 1;
            for m in (k * k..=max).step_by(k) {
                composite[m] = true;
            }
        }
    }
    counts
}

async fn get(client: &HttpClient, url: &str) -> Result<(StatusCode, String), Failed> {
    let resp = client.get(url.parse()?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// Asks `/primes/{n}` and returns the count the server answered.
async fn primes(client: &HttpClient, server_base: &str, n: u64) -> Result<u64, Failed> {
    let (status, body) = get(client, &format!("{server_base}/primes/{n}")).await?;
    ensure(
        status == StatusCode::OK,
        format!("/primes/{n}: {status} {body}"),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure(v["n"] == n, format!("/primes/{n}: {body}"))?;
    Ok(v["primes"]
        .as_u64()
        .ok_or_else(|| format!("/primes/{n}: {body}"))?)
}

async fn stats(client: &HttpClient, server: &Server) -> Result<serde_json::Value, Failed> {
    let (status, body) = get(client, &server.url("/stats")).await?;
    ensure(status == StatusCode::OK, format!("/stats: {status} {body}"))?;
    Ok(serde_json::from_str(&body)?)
}

/// Polls `/stats` until `want` holds, for up to ten seconds.
async fn wait_for_stats(
    client: &HttpClient,
    server: &Server,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), Failed> {
    let t0 = Instant::now();
    loop {
        let s = stats(client, server).await?;
        if want(&s) {
            return Ok(());
        }
        ensure(
            t0.elapsed() < Duration::from_secs(10),
            format!("stats never showed {what}: {s}"),
        )?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The children of `pid`, each with its start time, which tells it from a
/// later process that reuses its pid.
fn children_of(pid: u32) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|s| s.parse().ok()) {
            if let Some(t) = start_time(child) {
                out.push((child, t));
            }
        }
    }
    out
}

/// Field 22 of `/proc/PID/stat`, the start time in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the
    // state (field 3) comes after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

async fn scenario(stop: Stop) -> Result<(), Failed> {
    let mut server = Server::start(matches!(stop, Stop::CtrlC)).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = server.base.clone();

    // Bad input is a 400 and a failing task a 500, with the reason.
    for bad in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let (status, body) = get(&client, &server.url(&format!("/primes/{bad}"))).await?;
        ensure(
            status == StatusCode::BAD_REQUEST && body.contains("whole number"),
            format!("/primes/{bad}: {status} {body}"),
        )?;
    }
    let over = MAX_N + 1;
    let (status, body) = get(&client, &server.url(&format!("/primes/{over}"))).await?;
    ensure(
        status == StatusCode::BAD_REQUEST,
        format!("/primes/{over}: {status} {body}"),
    )?;
    let (status, body) = get(&client, &server.url("/panic")).await?;
    ensure(
        status == StatusCode::INTERNAL_SERVER_ERROR
            && body.starts_with("the task panicked")
            && body.contains("this task always panics"),
        format!("/panic: {status} {body}"),
    )?;

    // Many requests at once, every answer checked against the sieve.
    let ns: Vec<u64> = (0..CLIENTS * PER_CLIENT)
        .map(|i| if i < 6 { i } else { i * 1601 + i % 7 })
        .collect();
    let max = usize::try_from(ns.iter().copied().chain([LONG_N]).max().unwrap_or(0))?;
    let counts = prime_counts(max);
    let mut clients = JoinSet::new();
    for chunk in ns.chunks(usize::try_from(PER_CLIENT)?) {
        let (client, base, chunk) = (client.clone(), base.clone(), chunk.to_vec());
        clients.spawn(async move {
            let mut got = Vec::new();
            for n in chunk {
                got.push((n, primes(&client, &base, n).await?));
            }
            Ok::<_, Failed>(got)
        });
    }
    let mut answered = 0;
    while let Some(r) = clients.join_next().await {
        for (n, count) in r?? {
            let want = counts[usize::try_from(n)?];
            ensure(
                count == want,
                format!("/primes/{n}: {count} primes, want {want}"),
            )?;
            answered += 1;
        }
    }
    ensure(answered == ns.len(), format!("{answered} answers"))?;

    // A long request reaches a worker, then the signal comes.
    wait_for_stats(&client, &server, "an idle pool", |s| {
        s["busy"] == 0 && s["queued"] == 0
    })
    .await?;
    let long = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { primes(&client, &base, LONG_N).await }
    });
    wait_for_stats(&client, &server, "a busy worker", |s| {
        s["busy"].as_u64() >= Some(1)
    })
    .await?;
    let workers = stats(&client, &server).await?["workers"]
        .as_u64()
        .unwrap_or(0);
    let children = children_of(server.pid);
    ensure(
        children.len() as u64 >= workers && workers >= 1,
        format!("{} children for {workers} workers", children.len()),
    )?;
    let pid = Pid::from_raw(i32::try_from(server.pid)?);
    match stop {
        Stop::Term => kill(pid, Signal::SIGTERM)?,
        Stop::Int => kill(pid, Signal::SIGINT)?,
        Stop::CtrlC => killpg(pid, Signal::SIGINT)?,
    }

    // The request in flight is answered; the server exits with 0.
    let count = long.await??;
    ensure(
        count == counts[usize::try_from(LONG_N)?],
        format!("/primes/{LONG_N}: {count} primes during shutdown"),
    )?;
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .map_err(|_| format!("the server did not exit within 20 s of {stop:?}"))??;
    let mut rest = Vec::new();
    while let Some(line) = server.stdout.next_line().await? {
        rest.push(line);
    }
    let stderr = server.stderr.await?;
    ensure(
        status.code() == Some(0),
        format!("exit {status} after {stop:?}\nstdout: {rest:?}\nstderr:\n{stderr}"),
    )?;
    let signal = if matches!(stop, Stop::Term) {
        "SIGTERM"
    } else {
        "SIGINT"
    };
    ensure(
        rest.first()
            .is_some_and(|l| l.starts_with(&format!("{signal}: "))),
        format!("stdout after the address: {rest:?}"),
    )?;
    ensure(
        rest.last().is_some_and(|l| l.starts_with("stopped: ")),
        format!("stdout after the address: {rest:?}"),
    )?;

    // None of the server's children outlives it.
    let t0 = Instant::now();
    loop {
        let left: HashSet<u32> = children
            .iter()
            .filter(|&&(pid, started)| start_time(pid) == Some(started))
            .map(|&(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        ensure(
            t0.elapsed() < Duration::from_secs(5),
            format!("children of the server still there 5 s after it exited: {left:?}"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("sigterm_stops_the_server_cleanly", T, || {
            scenario(Stop::Term)
        }),
        case("sigint_stops_the_server_cleanly", T, || scenario(Stop::Int)),
        case("ctrl_c_to_the_process_group_stops_it_cleanly", T, || {
            scenario(Stop::CtrlC)
        }),
    ]
}
