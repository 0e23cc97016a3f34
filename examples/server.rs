//! An HTTP server whose handlers count primes on a shared pool of worker
//! processes, so the CPU work never blocks the server's own threads.
//!
//! ```text
//! cargo run --release --example server            # port 3000
//! cargo run --release --example server -- 0       # any free port
//! PORT=8080 cargo run --release --example server
//! ```
//!
//! It prints `listening on http://127.0.0.1:PORT` and serves:
//!
//! - `GET /primes/N`: `{"n":N,"primes":P}`, the number of primes below `N`
//!   (at most 10^7), counted by trial division in a pool worker. Anything
//!   else in place of `N` is a 400.
//! - `GET /panic`: a task that panics in its worker, answered with a 500
//!   and the error's text; the worker goes on.
//! - `GET /stats`: the pool's counters.
//!
//! ```text
//! $ curl http://127.0.0.1:3000/primes/1000000
//! {"n":1000000,"primes":78498}
//! ```
//!
//! On SIGINT (Ctrl-C) or SIGTERM it stops accepting connections, lets the
//! requests in flight finish, closes the pool, waits for the workers to
//! exit and exits with status 0. Pool workers ignore SIGINT, so a Ctrl-C
//! that reaches the whole process group does not cut their tasks short.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stop::Stop;
use tokio_multiprocessing as mp;

#[path = "shared/stop.rs"]
mod stop;

/// The largest `N` that `/primes/N` takes: about five seconds of work in
/// a release build.
const MAX_N: u64 = 10_000_000;

/// The number of primes below `n`, by trial division: slow on purpose.
fn count_primes(n: u64) -> u64 {
    let is_prime = |k: u64| {
        if k < 4 {
            return k >= 2;
        }
        if k % 2 == 0 {
            return false;
        }
        let mut d = 3;
        while d * d <= k {
            if k % d == 0 {
                return false;
            }
            d += 2;
        }
        true
    };
    (0..n).filter(|&k| is_prime(k)).count() as u64
}

fn always_panics(_: ()) {
    panic!("this task always panics");
}

/// An error answer: the status and a plain-text body.
type Reject = (StatusCode, String);

fn task_failed(e: mp::TaskError) -> Reject {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn primes(
    State(pool): State<mp::Pool>,
    Path(n): Path<String>,
) -> Result<Json<Value>, Reject> {
    let n: u64 = n.parse().ok().filter(|&n| n <= MAX_N).ok_or_else(|| {
        let why = format!("N must be a whole number from 0 to {MAX_N}, not {n:?}");
        (StatusCode::BAD_REQUEST, why)
    })?;
    let count = pool.apply(count_primes, n).await.map_err(task_failed)?;
    Ok(Json(json!({ "n": n, "primes": count })))
}

async fn panic(State(pool): State<mp::Pool>) -> Result<(), Reject> {
    pool.apply(always_panics, ()).await.map_err(task_failed)
}

async fn stats(State(pool): State<mp::Pool>) -> Json<Value> {
    let s = pool.stats();
    Json(json!({
        "workers": s.workers,
        "busy": s.busy,
        "queued": s.queued,
        "completed": s.completed,
        "failed": s.failed,
        "restarted": s.restarted,
    }))
}

/// The port from the first argument, else `PORT`, else 3000.
fn port() -> Result<u16, String> {
    let given = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok());
    match given {
        None => Ok(3000),
        Some(s) => s.parse().map_err(|_| format!("not a port: {s:?}")),
    }
}

async fn serve(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    // Before the address is printed, so that a signal sent as soon as it
    // is read is caught rather than killing the process.
    let stop = Stop::listen()?;

    // One worker per CPU. Workers ignore SIGINT, so a Ctrl-C that reaches
    // the whole process group is the server's to handle.
    let pool = mp::Pool::new(0).await?;
    let app = Router::new()
        .route("/primes/{n}", get(primes))
        .route("/panic", get(panic))
        .route("/stats", get(stats))
        .with_state(pool.clone());

    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    println!("listening on http://{}", listener.local_addr()?);

    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let name = stop.recv().await;
            println!("{name}: finishing the requests in flight");
        })
        .await?;

    pool.close();
    pool.join().await?;
    let s = pool.stats();
    println!(
        "stopped: {} tasks completed, {} failed",
        s.completed, s.failed
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    // First, before the runtime starts any thread, so that the workers
    // are forked by the fork server.
    let _guard = mp::init();
    let port = match port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(serve(port)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
