//! A small service under one supervisor (`service_tree/unix.rs`): an HTTP
//! server whose requests are served by a supervised pool, a background
//! child that reports readiness and heartbeats, and a program child that
//! speaks the `sd_notify` protocol. The supervisor's events are printed as
//! they happen.
//!
//! ```text
//! cargo run --release --example service_tree            # port 3000
//! cargo run --release --example service_tree -- 0       # any free port
//! ```
//!
//! Unix only for now: the `sd_notify` program child and process groups
//! have no Windows counterpart yet (see `docs/windows.md`).

#[cfg(unix)]
#[path = "service_tree/unix.rs"]
mod unix;

#[cfg(unix)]
fn main() -> std::process::ExitCode {
    unix::main()
}

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    eprintln!(
        "service_tree needs Unix: its sd_notify program child and process groups are not \
         ported to Windows yet (docs/windows.md)"
    );
    std::process::ExitCode::from(2)
}
