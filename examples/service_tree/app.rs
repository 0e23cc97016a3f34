//! A small service under one supervisor: an HTTP server whose requests
//! are served by a supervised pool, a background child that ticks and
//! reports readiness and heartbeats, and a program child that speaks the
//! `sd_notify` protocol. The supervisor's events are printed as they
//! happen.
//!
//! ```text
//! cargo run --release --example service_tree            # port 3000
//! cargo run --release --example service_tree -- 0       # any free port
//! ```
//!
//! It prints `listening on http://127.0.0.1:PORT` and serves:
//!
//! - `GET /square/N`: `{"n":N,"square":N²,"worker":PID}`, computed by a
//!   worker of the supervised pool `jobs`.
//! - `GET /children`: where each supervised child stands, and the pool's
//!   workers, as JSON.
//!
//! The tree, started in this order and stopped in the reverse one:
//!
//! ```text
//! service (one for one, at most 5 restarts in 10 s)
//! ├── jobs      a Pool of 2 workers; it replaces its own workers
//! ├── ticker    a target: ready once it ticked, a heartbeat every tick
//! └── sidecar   a program (this example's own binary, `--sidecar`):
//!               READY=1 and WATCHDOG=1 on NOTIFY_SOCKET, its output
//!               captured as events
//! ```
//!
//! Kill the ticker or a pool worker with `kill -9` and watch them come
//! back. On SIGINT (Ctrl-C) or SIGTERM the server stops accepting
//! connections, the supervisor stops the children in reverse order, and
//! the program exits with status 0. The ticker and the sidecar each lead a
//! process group of their own, so a Ctrl-C in the terminal does not reach
//! them (and pool workers ignore it): the supervisor decides the order.
//!
//! On Windows the stop requests are Ctrl-C and the console's close; the
//! sidecar's `NOTIFY_SOCKET` is a named pipe, written as a file, and a
//! stop ends a child's Job Object, as Windows has no `SIGTERM` (see
//! `docs/windows.md`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use mp::supervisor::{ChildSpec, ChildStatus, Shutdown, Strategy, Supervisor};
use serde_json::{Value, json};
use tokio_multiprocessing as mp;
use tokio_util::sync::CancellationToken;

use crate::stop::Stop;

/// How often the ticker ticks, in milliseconds; its watchdog allows four
/// missed ticks.
const TICK_MS: u64 = 250;

/// A pool task: the square of `n`, and which worker computed it.
fn square(n: u64) -> (u64, u32) {
    (n.wrapping_mul(n), std::process::id())
}

/// The ticker: ready after its first tick, then a heartbeat on every
/// tick, until the supervisor asks it to stop.
async fn ticker(period_ms: u64) -> u64 {
    let mut interval = tokio::time::interval(Duration::from_millis(period_ms));
    let mut ticks = 0u64;
    let stop = mp::shutdown_requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                ticks += 1;
                mp::heartbeat();
                if ticks == 1 {
                    mp::notify_ready();
                }
            }
            () = &mut stop => return ticks,
        }
    }
}

/// An error answer: the status and a plain-text body.
type Reject = (StatusCode, String);

async fn square_handler(
    State(sup): State<Supervisor>,
    Path(n): Path<String>,
) -> Result<Json<Value>, Reject> {
    let n: u64 = n.parse().map_err(|_| {
        let why = format!("N must be a whole number, not {n:?}");
        (StatusCode::BAD_REQUEST, why)
    })?;
    // Asked for on each request: after a restart the pool is a new one.
    let pool = sup.pool("jobs").ok_or_else(|| {
        let why = "the pool is restarting; try again".to_owned();
        (StatusCode::SERVICE_UNAVAILABLE, why)
    })?;
    let (square, worker) = pool
        .apply(square, n)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "n": n, "square": square, "worker": worker })))
}

async fn children_handler(State(sup): State<Supervisor>) -> Json<Value> {
    let pool = sup.pool("jobs").map(|p| {
        let s = p.stats();
        json!({ "workers": s.workers, "restarted": s.restarted })
    });
    let children: Vec<Value> = sup
        .which_children()
        .into_iter()
        .map(|c| {
            let state = match c.state {
                ChildStatus::Starting => "starting",
                ChildStatus::Running => "running",
                ChildStatus::Backoff => "backoff",
                ChildStatus::Stopping => "stopping",
                _ => "stopped",
            };
            json!({
                "name": c.name,
                "pid": c.pid,
                "state": state,
                "restarts": c.restarts,
                "generation": c.generation,
            })
        })
        .collect();
    Json(json!({ "children": children, "pool": pool }))
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
    let requests = Stop::listen()?;
    let stop = CancellationToken::new();

    let mut sidecar = tokio::process::Command::new(std::env::current_exe()?);
    sidecar.arg("--sidecar");
    let sup = Supervisor::builder()
        .name("service")
        .strategy(Strategy::OneForOne)
        .intensity(5, Duration::from_secs(10))
        .cancel_on(stop.clone())
        .child(ChildSpec::pool("jobs", mp::Pool::builder().processes(2)))
        .child(
            ChildSpec::new("ticker", ticker, TICK_MS)
                .ready_timeout(Duration::from_secs(10))
                .watchdog(Duration::from_millis(TICK_MS * 4))
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        )
        .child(
            ChildSpec::command("sidecar", sidecar)
                .ready_timeout(Duration::from_secs(10))
                .watchdog(Duration::from_secs(2))
                .capture_output(true),
        )
        .build();
    let mut events = sup.events();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            println!("event: {event}");
        }
    });
    sup.start().await?;

    let app = Router::new()
        .route("/square/{n}", get(square_handler))
        .route("/children", get(children_handler))
        .with_state(sup.clone());
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    println!("listening on http://{}", listener.local_addr()?);

    let signalled = stop.clone();
    tokio::spawn(async move {
        let name = requests.recv().await;
        println!("{name}: stopping");
        signalled.cancel();
    });
    // The server runs until the signal, or until the supervisor gives up.
    let watched = sup.clone();
    let server_stop = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = server_stop.cancelled() => {}
                _ = watched.wait() => {}
            }
        })
        .await?;
    // The token stops the supervisor (children in reverse order); its
    // end says whether it stopped by the signal or gave up.
    stop.cancel();
    let end = sup.wait().await;
    drop(sup);
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    end?;
    println!("stopped");
    Ok(())
}

/// Sends one notification to the supervisor: a datagram to the
/// `NOTIFY_SOCKET` path, as `sd_notify` does; on Windows, where
/// `NOTIFY_SOCKET` names a named pipe, one write to it. Failures are
/// ignored, as `sd_notify` ignores them.
fn notify(message: &str) {
    let Some(to) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    #[cfg(unix)]
    if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = socket.send_to(message.as_bytes(), to);
    }
    #[cfg(windows)]
    if let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(to) {
        let _ = std::io::Write::write_all(&mut pipe, message.as_bytes());
    }
}

/// The program child: this binary run with `--sidecar`. It speaks the
/// `sd_notify` protocol by hand, as any program written for systemd's
/// `Type=notify` does: `READY=1` once, then `WATCHDOG=1` at half the
/// interval the supervisor put in `WATCHDOG_USEC`. It exits on SIGTERM.
fn sidecar() -> std::process::ExitCode {
    let run = async {
        // Before READY=1, so that a SIGTERM right after it is caught.
        #[cfg(unix)]
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            #[cfg(unix)]
            sigterm.recv().await;
            // Windows has no SIGTERM: the supervisor's stop ends the
            // sidecar's Job Object instead.
            #[cfg(windows)]
            std::future::pending::<()>().await;
        };
        tokio::pin!(stop);
        let beat = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse().ok())
            .map_or(Duration::from_secs(1), |us| Duration::from_micros(us) / 2);
        notify("READY=1");
        println!("sidecar ready, heartbeat every {beat:?}");
        let mut interval = tokio::time::interval(beat);
        let mut beats = 0u64;
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    notify("WATCHDOG=1");
                    beats += 1;
                    if beats % 20 == 0 {
                        println!("sidecar alive, {beats} heartbeats");
                    }
                }
                () = &mut stop => break,
            }
        }
        println!("sidecar stopping after {beats} heartbeats");
        Ok::<(), std::io::Error>(())
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--sidecar") {
        return sidecar();
    }
    // First, before the runtime starts any thread, so that the children
    // are forked by the fork server.
    let _guard = mp::init();
    let port = match port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("service_tree: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(serve(port)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service_tree: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
