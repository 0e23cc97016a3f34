//! A small service under one supervisor (`service_tree/app.rs`): an HTTP
//! server whose requests are served by a supervised pool, a background
//! child that reports readiness and heartbeats, and a program child that
//! speaks the `sd_notify` protocol. The supervisor's events are printed as
//! they happen.
//!
//! ```text
//! cargo run --release --example service_tree            # port 3000
//! cargo run --release --example service_tree -- 0       # any free port
//! ```

#[path = "service_tree/app.rs"]
mod app;
#[path = "shared/stop.rs"]
mod stop;

fn main() -> std::process::ExitCode {
    app::main()
}
