//! Captured output of supervised children: a target's lines become
//! `Event::Log`s as a program's do, and no child's `Log` ever comes
//! before its `Started`.

use std::io::Write;
use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, Event, EventStream, ExitKind, OutputStream, Restart, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::containment::until;

/// Waits for `Started` of `child`'s `generation` and returns its pid;
/// fails if a line of `child` comes first.
pub(crate) async fn started_before_any_log(
    events: &mut EventStream,
    child: &str,
    generation: u64,
) -> Result<u32, Failed> {
    let e = until(events, |e| match e {
        Event::Started { child: c, .. } | Event::Log { child: c, .. } => c == child,
        _ => false,
    })
    .await?;
    match e {
        Event::Started {
            pid, generation: g, ..
        } if g == generation => Ok(pid),
        other => Err(format!("{child}: {other} before its Started").into()),
    }
}

/// The lines of `child` (pid `pid`) until it has exited and written
/// `out` lines to stdout and `err` to stderr.
async fn lines_until_exit(
    events: &mut EventStream,
    (child, pid): (&str, u32),
    (out_n, err_n): (usize, usize),
) -> Result<(Vec<String>, Vec<String>, ExitKind), Failed> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut exit = None;
    while out.len() < out_n || err.len() < err_n || exit.is_none() {
        match until(events, |e| {
            matches!(e, Event::Log { .. } | Event::Exited { .. })
        })
        .await?
        {
            Event::Log {
                child: c,
                pid: p,
                stream,
                line,
            } => {
                ensure(
                    c == child && p == pid,
                    format!("a line of {child}[{pid}]: {c}[{p}]"),
                )?;
                match stream {
                    OutputStream::Stdout => out.push(line),
                    _ => err.push(line),
                }
            }
            Event::Exited { exit: e, .. } => exit = Some(e),
            _ => unreachable!("filtered above"),
        }
    }
    Ok((out, err, exit.unwrap_or(ExitKind::Normal)))
}

fn talk(_: ()) {
    // At once: a line told before `Started` would show here.
    for i in 0..100 {
        println!("out {i}");
        eprintln!("err {i}");
    }
    print!("last, without a newline");
    let _ = std::io::stdout().flush();
}

/// A target started with `capture_output(true)`: each line is an
/// `Event::Log` after its `Started`, in order per stream.
async fn a_target_s_lines_are_log_events_after_started() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("talker", talk, ())
                .restart(Restart::Temporary)
                .capture_output(true),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let pid = started_before_any_log(&mut events, "root/talker", 1).await?;
    let (out, err, exit) = lines_until_exit(&mut events, ("root/talker", pid), (101, 100)).await?;
    let mut want_out: Vec<String> = (0..100).map(|i| format!("out {i}")).collect();
    want_out.push("last, without a newline".into());
    let want_err: Vec<String> = (0..100).map(|i| format!("err {i}")).collect();
    ensure(out == want_out, format!("stdout in order: {out:?}"))?;
    ensure(err == want_err, format!("stderr in order: {err:?}"))?;
    ensure(exit == ExitKind::Normal, format!("exit: {exit:?}"))?;
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "a_target_s_lines_are_log_events_after_started",
        Duration::from_secs(30),
        a_target_s_lines_are_log_events_after_started,
    )]
}
