//! A child's captured output and its panics, as the parent's `tracing`
//! events: lines in order per stream, labelled with the child, long lines
//! in pieces, a flood that a slow subscriber holds back (never losing a
//! byte), a pool's workers, and one ERROR event with the backtrace of a
//! panic. Under both start methods (on Windows, which has no fork server,
//! under `Spawn` only).
//!
//! A subscriber is the whole program's, and so is the environment the
//! fork server keeps: each case runs in a run of the test binary of its
//! own, with [`ENV`] set, where `main` installs the recording subscriber
//! below and sets `RUST_BACKTRACE=1` before `init()` (see
//! `common::module_in_reruns`).

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::common::{Case, case, ensure};

/// In the environment of the runs of these cases.
pub(crate) const ENV: (&str, &str) = ("TMP_OUTPUT_CASES", "1");

/// The target of the events the library emits for a child.
const CHILD_TARGET: &str = "tokio_multiprocessing::child";

/// Whether this is such a run.
pub(crate) fn asked() -> bool {
    std::env::var_os(ENV.0).is_some_and(|v| v == ENV.1)
}

/// What one run needs before `init()`: backtraces on (inherited by the
/// fork server and every child), and the recording subscriber.
pub(crate) fn prepare() {
    // SAFETY: called first thing in `main`, before `init()` and before
    // any thread of this program (or of the harness) starts, so nothing
    // reads the environment while it changes.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let subscriber = tracing_subscriber::registry().with(Recorder);
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

/// One event the library emitted for a child.
#[derive(Debug, Clone, Default)]
struct Record {
    level: Option<Level>,
    /// The `process` and `pid` of the `child` span it was in.
    process: String,
    pid: u64,
    stream: String,
    message: String,
    location: String,
    backtrace: Option<String>,
}

/// Every event with the child target, in the order they came.
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// The records of the children named `process`.
fn records_of(process: &str) -> Vec<Record> {
    RECORDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|r| r.process == process)
        .cloned()
        .collect()
}

/// A layer that keeps the events for children, with their span's labels;
/// it sleeps 1 ms on each event of a child whose name starts with `slow`.
struct Recorder;

/// The labels of a `child` span.
#[derive(Default)]
struct Labels {
    process: String,
    pid: u64,
}

impl Visit for Labels {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "process" {
            self.process = value.to_owned();
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "pid" {
            self.pid = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "process" {
            self.process = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stream" => self.stream = value.to_owned(),
            "location" => self.location = value.to_owned(),
            "backtrace" => self.backtrace = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "backtrace" => self.backtrace = Some(format!("{value:?}")),
            "location" => self.location = format!("{value:?}").trim_matches('"').to_owned(),
            "stream" => self.stream = format!("{value:?}").trim_matches('"').to_owned(),
            _ => {}
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != CHILD_TARGET {
            return;
        }
        let mut labels = Labels::default();
        attrs.record(&mut labels);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(labels);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != CHILD_TARGET {
            return;
        }
        let mut record = Record {
            level: Some(*event.metadata().level()),
            ..Record::default()
        };
        event.record(&mut record);
        if let Some(span) = ctx.event_span(event)
            && let Some(labels) = span.extensions().get::<Labels>()
        {
            record.process = labels.process.clone();
            record.pid = labels.pid;
        }
        if record.process.starts_with("slow") {
            std::thread::sleep(Duration::from_millis(1));
        }
        RECORDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

/// The lines of `records` from `stream`, in order.
fn lines(records: &[Record], stream: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.message.clone())
        .collect()
}

/// A builder for a child named `name`, captured, started by `method`.
fn captured(name: &str, method: mp::StartMethod) -> mp::ProcessBuilder {
    mp::Process::builder()
        .name(name)
        .capture_output(true)
        .start_method(method)
}

fn talk(_: ()) {
    for i in 0..100 {
        println!("out {i}");
        eprintln!("err {i}");
    }
    print!("last, without a newline");
    let _ = std::io::stdout().flush();
}

/// 100 lines to each stream, interleaved, and a last one without a
/// newline: every one is an INFO event inside the child's span, in order
/// per stream, all told before `join` returns.
async fn lines_in_order(method: mp::StartMethod, name: &str) -> Result<(), Failed> {
    let p = captured(name, method).build(talk, ());
    p.start().await?;
    let pid = p.pid().ok_or("a pid")?;
    p.join().await?;
    let records = records_of(name);
    let mut want_out: Vec<String> = (0..100).map(|i| format!("out {i}")).collect();
    want_out.push("last, without a newline".into());
    let want_err: Vec<String> = (0..100).map(|i| format!("err {i}")).collect();
    let (out, err) = (lines(&records, "stdout"), lines(&records, "stderr"));
    ensure(out == want_out, format!("stdout in order: {out:?}"))?;
    ensure(err == want_err, format!("stderr in order: {err:?}"))?;
    ensure(
        records.len() == 201,
        format!("nothing else: {}", records.len()),
    )?;
    ensure(
        records
            .iter()
            .all(|r| r.pid == u64::from(pid) && r.level == Some(Level::INFO)),
        "each at INFO, labelled with the child's pid",
    )?;
    Ok(())
}

fn leave_unflushed(_: ()) {
    print!("rust, unflushed");
    // C's stdout on a pipe is fully buffered: this stays in its buffer.
    #[cfg(unix)]
    // SAFETY: `puts` with a NUL-terminated string.
    unsafe {
        libc::puts(c", c, unflushed".as_ptr());
    }
}

/// What a child leaves in its standard streams' buffers, Rust's and the C
/// library's, still comes out when it ends, as a Python child's
/// `sys.stdout` is flushed before it exits.
async fn what_is_left_unflushed_still_comes(
    method: mp::StartMethod,
    name: &str,
) -> Result<(), Failed> {
    let p = captured(name, method).build(leave_unflushed, ());
    p.start().await?;
    p.join().await?;
    ensure(p.exitcode() == Some(0), "a clean exit")?;
    let out = lines(&records_of(name), "stdout");
    let want = if cfg!(unix) {
        "rust, unflushed, c, unflushed"
    } else {
        "rust, unflushed"
    };
    ensure(out == [want], format!("stdout: {out:?}"))?;
    Ok(())
}

const LONG: usize = 200 * 1024;

/// The long line: 200 KiB of a pattern that shows any piece out of place.
fn long_line() -> String {
    (0..LONG)
        .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz"[i % 26]))
        .collect()
}

fn long_talk(_: ()) {
    println!("{}", long_line());
    println!("after");
}

/// A 200 KiB line comes in pieces of at most 64 KiB that make it up again.
async fn a_long_line_comes_in_pieces(method: mp::StartMethod, name: &str) -> Result<(), Failed> {
    let p = captured(name, method).build(long_talk, ());
    p.start().await?;
    p.join().await?;
    let out = lines(&records_of(name), "stdout");
    ensure(
        out.last().map(String::as_str) == Some("after"),
        "the next line after it",
    )?;
    let pieces = &out[..out.len() - 1];
    ensure(
        pieces.len() == LONG.div_ceil(64 * 1024),
        format!("{} pieces", pieces.len()),
    )?;
    ensure(
        pieces.iter().all(|p| p.len() <= 64 * 1024),
        "each at most 64 KiB",
    )?;
    ensure(
        pieces.concat() == long_line(),
        "the pieces make up the line",
    )?;
    Ok(())
}

const FLOOD_LINE: usize = 16 * 1024;
const FLOOD: usize = 64 * 1024 * 1024;

fn flood(_: ()) {
    let mut out = std::io::stdout().lock();
    let mut line = vec![b'x'; FLOOD_LINE];
    line[FLOOD_LINE - 1] = b'\n';
    for i in 0..FLOOD / FLOOD_LINE {
        // Each line starts with its number, to check the order.
        let tag = format!("{i:08}");
        line[..8].copy_from_slice(tag.as_bytes());
        out.write_all(&line).expect("the pipe takes it, in time");
    }
}

/// 64 MiB written to stdout while the subscriber takes 1 ms an event: the
/// child is slowed by the pipe, not killed, and every byte arrives in
/// order.
async fn a_flood_is_held_back_not_lost(method: mp::StartMethod, name: &str) -> Result<(), Failed> {
    let p = captured(name, method).build(flood, ());
    p.start().await?;
    p.join().await?;
    ensure(
        p.exitcode() == Some(0),
        format!("exit 0: {:?}", p.exitcode()),
    )?;
    let out = lines(&records_of(name), "stdout");
    ensure(
        out.len() == FLOOD / FLOOD_LINE,
        format!("{} lines", out.len()),
    )?;
    let bytes: usize = out.iter().map(|l| l.len() + 1).sum();
    ensure(bytes == FLOOD, format!("{bytes} bytes"))?;
    for (i, l) in out.iter().enumerate() {
        ensure(
            l.starts_with(&format!("{i:08}")) && l[8..].bytes().all(|b| b == b'x'),
            format!("line {i} intact and in its place"),
        )?;
    }
    Ok(())
}

#[inline(never)]
fn panicking_target_for_the_backtrace(_: ()) {
    panic!("the child gives up");
}

/// A panic: `join` gives its message, location and backtrace (with the
/// panicking function in it); the subscriber got one ERROR event, with
/// them, labelled with the child.
async fn a_panic_is_one_error_event_with_its_backtrace(
    method: mp::StartMethod,
    name: &str,
) -> Result<(), Failed> {
    let p = mp::Process::builder()
        .name(name)
        .start_method(method)
        .build(panicking_target_for_the_backtrace, ());
    p.start().await?;
    let pid = p.pid().ok_or("a pid")?;
    let info = match p.join().await {
        Err(mp::ProcessError::Panicked(info)) => info,
        other => return Err(format!("a panic: {other:?}").into()),
    };
    ensure(info.message == "the child gives up", &info.message)?;
    let location = info.location.clone().unwrap_or_default();
    ensure(location.contains("output.rs"), &location)?;
    let backtrace = info.backtrace.clone().unwrap_or_default();
    ensure(
        backtrace.contains("panicking_target_for_the_backtrace"),
        format!("the backtrace names the function: {backtrace}"),
    )?;
    let records = records_of(name);
    let errors: Vec<&Record> = records
        .iter()
        .filter(|r| r.level == Some(Level::ERROR))
        .collect();
    ensure(errors.len() == 1, format!("one ERROR event: {records:?}"))?;
    let e = errors[0];
    ensure(e.pid == u64::from(pid), "labelled with the child's pid")?;
    ensure(
        e.message.contains("the child gives up"),
        format!("its message: {}", e.message),
    )?;
    ensure(
        e.location == location,
        format!("its location: {}", e.location),
    )?;
    ensure(
        e.backtrace
            .as_deref()
            .is_some_and(|b| b.contains("panicking_target_for_the_backtrace")),
        "its backtrace",
    )?;
    Ok(())
}

fn shout(x: u32) -> u32 {
    println!("task {x} says hello");
    eprintln!("task {x} complains");
    x * 2
}

/// A pool whose workers' output is captured: what each task prints is an
/// event, labelled with the worker that ran it.
async fn a_pool_task_prints() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(2)
        .capture_output(true)
        .build()
        .await?;
    let doubled = pool.map(shout, 0..20u32).await?;
    ensure(
        doubled == (0..20).map(|x| x * 2).collect::<Vec<_>>(),
        "the values",
    )?;
    pool.close();
    pool.join().await?;
    let all = RECORDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for x in 0..20 {
        let hello = format!("task {x} says hello");
        let out: Vec<&Record> = all.iter().filter(|r| r.message == hello).collect();
        ensure(
            out.len() == 1 && out[0].stream == "stdout" && out[0].pid != 0,
            format!("{hello}: {out:?}"),
        )?;
        let complaint = format!("task {x} complains");
        ensure(
            all.iter()
                .any(|r| r.message == complaint && r.stream == "stderr"),
            &complaint,
        )?;
    }
    Ok(())
}

// On Windows the loop below is over `Spawn` alone.
#[cfg_attr(windows, allow(clippy::single_element_loop))]
pub(crate) fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (method, tag) in [
        // Unix only: Windows has no fork server.
        #[cfg(unix)]
        (mp::StartMethod::ForkServer, "fork_server"),
        (mp::StartMethod::Spawn, "spawn"),
    ] {
        cases.push(case(
            &format!("lines_in_order::{tag}"),
            Duration::from_secs(60),
            move || lines_in_order(method, "talker"),
        ));
        cases.push(case(
            &format!("what_is_left_unflushed_still_comes::{tag}"),
            Duration::from_secs(60),
            move || what_is_left_unflushed_still_comes(method, "unflushed"),
        ));
        cases.push(case(
            &format!("a_long_line_comes_in_pieces::{tag}"),
            Duration::from_secs(60),
            move || a_long_line_comes_in_pieces(method, "long"),
        ));
        cases.push(case(
            &format!("a_flood_is_held_back_not_lost::{tag}"),
            Duration::from_secs(120),
            move || a_flood_is_held_back_not_lost(method, "slow-flood"),
        ));
        cases.push(case(
            &format!("a_panic_is_one_error_event_with_its_backtrace::{tag}"),
            Duration::from_secs(60),
            move || a_panic_is_one_error_event_with_its_backtrace(method, "quitter"),
        ));
    }
    cases.push(case(
        "a_pool_task_prints",
        Duration::from_secs(60),
        a_pool_task_prints,
    ));
    cases
}
