//! The `service_tree` example, driven from outside as an operator would:
//! requests from a real HTTP client, `SIGKILL` to a pool worker and to the
//! ticker (both come back: the worker replaced by its pool, the ticker
//! restarted by the supervisor), then `SIGTERM`: exit status 0, the
//! children stopped in reverse order, and no descendant left.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use libtest_mimic::Failed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::common::{self, Case, case, ensure, run};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, url: &str) -> Result<(StatusCode, Value), Failed> {
    let resp = client.get(url.parse()?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, value))
}

fn signal(pid: u32, sig: Signal) -> Result<(), Failed> {
    kill(Pid::from_raw(i32::try_from(pid)?), sig)?;
    Ok(())
}

/// Field 22 of `/proc/PID/stat`, the start time, which tells a process
/// from a later one that reuses its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every descendant of `pid`, with its start time.
fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in common::children_of(p) {
            if let Some(t) = start_time(c) {
                out.push((c, t));
                todo.push(c);
            }
        }
    }
    out
}

/// The child named `name` in a `/children` answer.
fn child<'a>(answer: &'a Value, name: &str) -> Option<&'a Value> {
    answer["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// Polls `/children` until `want` holds, for up to 20 s.
async fn wait_for(
    client: &HttpClient,
    base: &str,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Result<Value, Failed> {
    let t0 = Instant::now();
    loop {
        let (status, answer) = get(client, &format!("{base}/children")).await?;
        if status == StatusCode::OK && want(&answer) {
            return Ok(answer);
        }
        ensure(
            t0.elapsed() < Duration::from_secs(20),
            format!("/children never showed {what}: {answer}"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker pid of a `/square/n` answer, checking the square.
async fn square(client: &HttpClient, base: &str, n: u64) -> Result<u64, Failed> {
    let (status, v) = get(client, &format!("{base}/square/{n}")).await?;
    ensure(
        status == StatusCode::OK && v["square"] == n * n,
        format!("/square/{n}: {status} {v}"),
    )?;
    v["worker"].as_u64().ok_or_else(|| "no worker pid".into())
}

/// The example's whole life, killed twice and stopped by SIGTERM.
async fn survives_kills_and_stops_cleanly() -> Result<(), Failed> {
    let mut service = Command::new(run::example("service_tree"))
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let server = service.id().ok_or("no pid")?;
    let mut err = service.stderr.take().ok_or("stderr is piped")?;
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    // Every line, as it comes.
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let mut stdout = BufReader::new(service.stdout.take().ok_or("stdout is piped")?).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            let _ = line_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let base = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .map_err(|_| format!("no address within 30 s; printed {seen:?}"))?
            .ok_or_else(|| format!("stdout closed; printed {seen:?}"))?;
        if let Some(base) = line.strip_prefix("listening on ") {
            break base.to_owned();
        }
        seen.push(line);
    };
    // Started in order, each ready before the next. The events are printed
    // by a task of their own, which may print the last ones just after the
    // address.
    let is_start_up = |l: &String| {
        l.strip_prefix("event: service/")
            .is_some_and(|l| l.contains(": started") || l.contains(": ready"))
    };
    while seen.iter().filter(|l| is_start_up(l)).count() < 5 {
        match tokio::time::timeout(Duration::from_secs(10), lines.recv()).await {
            Ok(Some(line)) => seen.push(line),
            _ => break,
        }
    }
    let order: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("event: service/"))
        .filter(|l| l.contains(": started") || l.contains(": ready"))
        .collect();
    ensure(
        order.len() == 5
            && order[0].starts_with("jobs: started")
            && order[1].starts_with("ticker: started")
            && order[2].starts_with("ticker: ready")
            && order[3].starts_with("sidecar: started")
            && order[4].starts_with("sidecar: ready"),
        format!("start-up events: {order:?}"),
    )?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // A pool worker dies; the pool replaces it, the supervisor does not
    // restart the pool.
    let worker = square(&client, &base, 12).await?;
    ensure(
        descendants(server)
            .iter()
            .any(|&(p, _)| u64::from(p) == worker),
        "the worker is the service's descendant",
    )?;
    let before = wait_for(&client, &base, "everything running", |v| {
        ["jobs", "ticker", "sidecar"]
            .iter()
            .all(|n| child(v, n).is_some_and(|c| c["state"] == "running"))
    })
    .await?;
    signal(u32::try_from(worker)?, Signal::SIGKILL)?;
    wait_for(&client, &base, "a replaced worker", |v| {
        v["pool"]["restarted"].as_u64() >= Some(1) && v["pool"]["workers"] == 2
    })
    .await?;
    for n in 0..20 {
        let w = square(&client, &base, n).await?;
        ensure(w != worker, "the killed worker does not answer")?;
    }
    let jobs = child(&before, "jobs").ok_or("jobs")?;
    let after = wait_for(&client, &base, "the pool", |v| child(v, "jobs").is_some()).await?;
    ensure(
        child(&after, "jobs").is_some_and(|c| c["generation"] == jobs["generation"]),
        "the pool itself was not restarted",
    )?;

    // The ticker dies; the supervisor starts a new one, and it is ready.
    let ticker = child(&before, "ticker").ok_or("ticker")?;
    let old = ticker["pid"].as_u64().ok_or("ticker pid")?;
    signal(u32::try_from(old)?, Signal::SIGKILL)?;
    wait_for(&client, &base, "a new ticker", |v| {
        child(v, "ticker").is_some_and(|c| {
            c["state"] == "running"
                && c["pid"].as_u64().is_some_and(|p| p != old)
                && c["generation"] == 2
                && c["restarts"] == 1
        })
    })
    .await?;
    ensure(
        !common::is_running(u32::try_from(old)?),
        "the old ticker is gone",
    )?;

    // SIGTERM: status 0, stopped in reverse order, nothing left.
    let family = descendants(server);
    ensure(
        family.len() >= 5,
        format!("fork server, 2 workers, ticker, sidecar: {family:?}"),
    )?;
    signal(server, Signal::SIGTERM)?;
    let status = tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .map_err(|_| "the service did not exit within 30 s of SIGTERM")??;
    let mut rest = Vec::new();
    while let Some(line) = lines.recv().await {
        rest.push(line);
    }
    let stderr = stderr.await?;
    ensure(
        status.code() == Some(0),
        format!("exit {status}\nstdout: {rest:#?}\nstderr:\n{stderr}"),
    )?;
    let stopping: Vec<&str> = rest
        .iter()
        .filter_map(|l| l.strip_prefix("event: service/"))
        .filter(|l| l.contains(": stopping pid"))
        .collect();
    ensure(
        stopping.len() == 3
            && stopping[0].starts_with("sidecar")
            && stopping[1].starts_with("ticker")
            && stopping[2].starts_with("jobs"),
        format!("stop order: {stopping:?}"),
    )?;
    ensure(
        rest.iter().any(|l| l.contains("sidecar stopping after")),
        format!("the sidecar stopped by itself on SIGTERM: {rest:#?}"),
    )?;
    ensure(
        rest.last().is_some_and(|l| l == "stopped"),
        format!("last line: {rest:#?}"),
    )?;
    let t0 = Instant::now();
    loop {
        let left: Vec<u32> = family
            .iter()
            .filter(|&&(pid, t)| start_time(pid) == Some(t) && common::is_running(pid))
            .map(|&(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        ensure(
            t0.elapsed() < Duration::from_secs(10),
            format!("descendants left after the service exited: {left:?}"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "survives_kills_and_stops_cleanly",
        Duration::from_secs(120),
        survives_kills_and_stops_cleanly,
    )]
}
