//! Programs as children (`ChildSpec::command`), against the real thing:
//! `systemd-notify` and a `python3` program that speaks the `sd_notify`
//! datagram protocol itself. Readiness gates the next child, heartbeats
//! keep a program alive and their absence gets it killed and restarted,
//! only the program's own process group may speak for it, captured output
//! becomes `Event::Log`, the stop signal is the one asked for, and exits
//! map to `ExitKind`s.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::{
    ChildSpec, ChildStatus, Event, ExitKind, OutputStream, Restart, Shutdown, Supervisor,
    SupervisorError,
};
use tokio::process::Command;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure, eventually, is_running};
use crate::containment::{
    Scratch, collect_until, drain, exited, group_exists, publish, started, until,
};
use crate::output::started_before_any_log;

/// A program speaking `sd_notify` by hand, in Python; its first argument
/// picks what it does.
const PY: &str = r#"
import os, signal, socket, sys, time

def notify(text, path=None):
    path = path or os.environ["NOTIFY_SOCKET"]
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), path)

def forever():
    while True:
        time.sleep(3600)

mode = sys.argv[1]
if mode == "watchdog":
    # READY=1, then WATCHDOG=1 ten times per interval, PINGS times.
    print("WATCHDOG_USEC=" + os.environ.get("WATCHDOG_USEC", "unset"), flush=True)
    interval = int(os.environ["WATCHDOG_USEC"]) / 1e6
    notify("READY=1")
    for _ in range(int(sys.argv[2])):
        time.sleep(interval / 10)
        notify("WATCHDOG=1")
    print("stopped pinging", flush=True)
    forever()
elif mode == "never-ready":
    while True:
        notify("WATCHDOG=1\nSTATUS=still starting")
        time.sleep(0.05)
elif mode == "ready":
    notify("READY=1")
    forever()
elif mode == "traps":
    # Each stop signal ends the program with code 100 + its number.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda n, _: sys.exit(100 + n))
    notify("READY=1")
    forever()
elif mode == "outsider":
    notify("READY=1", sys.argv[2])
elif mode == "kill-self":
    os.kill(os.getpid(), signal.SIGKILL)
"#;

/// `python3 -c PY args...`.
fn python(args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PY).args(args);
    cmd
}

/// `sh -c script sh args...`.
fn sh(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh").args(args);
    cmd
}

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// Events other than captured output.
fn without_logs(events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| !matches!(e, Event::Log { .. }))
        .collect()
}

/// `READY=1` (systemd-notify's, a non-leader group member's) gates the next child's start.
async fn readiness_gates_the_next_child() -> Result<(), Failed> {
    let dir = Scratch::new("gate")?;
    let gate = dir.join("gate");
    let a = sh(
        r#"while [ ! -e "$1" ]; do sleep 0.01; done; systemd-notify --ready; exec sleep 1000"#,
        &[gate.to_str().ok_or("a path")?],
    );
    let b = sh(r#"python3 -c "$1" ready & wait"#, &[PY]);
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::command("a", a).ready_timeout(Duration::from_secs(60)))
        .child(ChildSpec::command("b", b).ready_timeout(Duration::from_secs(30)))
        .build();
    let mut events = sup.events();
    let starting = tokio::spawn({
        let sup = sup.clone();
        async move { sup.start().await }
    });
    let a_pid = started(&mut events, "root/a", 1).await?;
    // Give a wrong start of b every chance to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids = sup.which_children();
    ensure(
        kids.len() == 2
            && kids[0].state == ChildStatus::Starting
            && kids[1].pid.is_none()
            && kids[1].generation == 0,
        format!("b waits while a is not ready: {kids:?}"),
    )?;
    ensure(!starting.is_finished(), "start() waits for readiness")?;
    publish(&gate, "");
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Ready { child, .. } if child == "root/b"),
    )
    .await?;
    let b_pid = match seen.get(1) {
        Some(Event::Started {
            child,
            pid,
            generation: 1,
        }) if child == "root/b" => *pid,
        _ => return Err(format!("a ready, then b started: {seen:?}").into()),
    };
    ensure(
        seen == vec![
            Event::Ready {
                child: "root/a".into(),
                pid: a_pid,
            },
            Event::Started {
                child: "root/b".into(),
                pid: b_pid,
                generation: 1,
            },
            Event::Ready {
                child: "root/b".into(),
                pid: b_pid,
            },
        ],
        format!("a ready, b started, b ready, nothing else: {seen:?}"),
    )?;
    starting.await??;
    sup.shutdown().await?;
    Ok(())
}

/// Runs `cmd` (which prints `stopped pinging` once it stops sending
/// `WATCHDOG=1`, after pinging for longer than `watchdog`) and checks the
/// cycle: ready, kept alive by its pings, killed for missing one (only
/// after it stopped), reported as a `WatchdogTimeout` exit, restarted and
/// ready again.
async fn watchdog_cycle(cmd: Command, watchdog: Duration) -> Result<Vec<Event>, Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .intensity(5, Duration::from_secs(60))
        .child(
            ChildSpec::command("p", cmd)
                .ready_timeout(Duration::from_secs(20))
                .watchdog(watchdog)
                .capture_output(true),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = sup.which_children()[0].pid.ok_or("a pid")?;
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Ready { pid, .. } if *pid != first),
    )
    .await?;
    let position = |want: &dyn Fn(&Event) -> bool| seen.iter().position(want);
    let stopped = position(&|e| matches!(e, Event::Log { line, .. } if line == "stopped pinging"))
        .ok_or("the program said it stopped pinging")?;
    let fired = position(&|e| matches!(e, Event::WatchdogTimeout { pid, .. } if *pid == first))
        .ok_or("the watchdog fired")?;
    let exit = position(&|e| {
        matches!(e, Event::Exited { pid, exit: ExitKind::WatchdogTimeout, .. } if *pid == first)
    })
    .ok_or("the exit is a WatchdogTimeout")?;
    let restarted =
        position(&|e| matches!(e, Event::Started { generation: 2, pid, .. } if *pid != first))
            .ok_or("a second incarnation started")?;
    ensure(
        stopped < fired && fired < exit && exit < restarted,
        format!("pings kept it alive until it stopped, then it was killed and restarted: {seen:?}"),
    )?;
    let fired_count = seen
        .iter()
        .filter(|e| matches!(e, Event::WatchdogTimeout { .. }))
        .count();
    ensure(fired_count == 1, format!("one watchdog timeout: {seen:?}"))?;
    ensure(!is_running(first), "the silent incarnation is gone")?;
    sup.shutdown().await?;
    Ok(seen)
}

/// A Python program reads `WATCHDOG_USEC`, lives by its pings, is killed and restarted after.
async fn python_speaks_sd_notify_and_its_watchdog() -> Result<(), Failed> {
    let seen = watchdog_cycle(python(&["watchdog", "15"]), Duration::from_secs(2)).await?;
    let first = seen
        .iter()
        .find_map(|e| match e {
            Event::Log { pid, line, .. } if line.starts_with("WATCHDOG_USEC=") => {
                Some((*pid, line.clone()))
            }
            _ => None,
        })
        .ok_or("the program printed its WATCHDOG_USEC")?;
    ensure(
        first.1 == "WATCHDOG_USEC=2000000",
        format!("WATCHDOG_USEC is the watchdog in microseconds: {first:?}"),
    )?;
    Ok(())
}

/// `systemd-notify WATCHDOG=1` (with `BARRIER=1`) keeps a program alive until the pings stop.
async fn systemd_notify_pings_keep_a_program_alive() -> Result<(), Failed> {
    let cmd = sh(
        r#"systemd-notify --ready
        i=0
        while [ $i -lt 10 ]; do sleep 0.2; systemd-notify WATCHDOG=1; i=$((i+1)); done
        echo "stopped pinging"
        exec sleep 1000"#,
        &[],
    );
    watchdog_cycle(cmd, Duration::from_millis(1500)).await?;
    Ok(())
}

/// A program never saying `READY=1` fails `start()` with `ReadyTimeout`, stopping what started.
async fn never_ready_fails_the_start() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("first", serve, ()).ready_timeout(Duration::from_secs(10)))
        .child(
            ChildSpec::command("silent", python(&["never-ready"]))
                .ready_timeout(Duration::from_secs(2)),
        )
        .build();
    let events = sup.events();
    let result = sup.start().await;
    ensure(
        result
            == Err(SupervisorError::StartFailed {
                child: "root/silent".into(),
                exit: ExitKind::ReadyTimeout,
            }),
        format!("the start failed with ReadyTimeout: {result:?}"),
    )?;
    let seen = without_logs(drain(sup, events).await?);
    let (first, silent) = match (seen.first(), seen.get(2)) {
        (Some(Event::Started { pid: f, .. }), Some(Event::Started { pid: s, .. })) => (*f, *s),
        _ => return Err(format!("two starts: {seen:?}").into()),
    };
    let shape: Vec<(&str, &str)> = seen
        .iter()
        .map(|e| match e {
            Event::Started { child, .. } => ("started", child.as_str()),
            Event::Ready { child, .. } => ("ready", child.as_str()),
            Event::Stopping { child, .. } => ("stopping", child.as_str()),
            Event::Exited {
                child,
                exit: ExitKind::ReadyTimeout,
                ..
            } => ("exited not ready", child.as_str()),
            Event::Exited { child, .. } => ("exited", child.as_str()),
            _ => ("other", ""),
        })
        .collect();
    ensure(
        shape
            == [
                ("started", "root/first"),
                ("ready", "root/first"),
                ("started", "root/silent"),
                ("stopping", "root/silent"),
                ("exited not ready", "root/silent"),
                ("stopping", "root/first"),
                ("exited", "root/first"),
            ],
        format!("the silent program is stopped, then the first child: {seen:?}"),
    )?;
    ensure(
        !is_running(first) && !is_running(silent) && !group_exists(silent),
        "both are gone",
    )?;
    Ok(())
}

/// `READY=1` from outside the program's group (test, python, systemd-notify) is ignored.
async fn ready_from_outside_the_group_is_ignored() -> Result<(), Failed> {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::command("p", cmd).ready_timeout(Duration::from_secs(4)))
        .build();
    let mut events = sup.events();
    let starting = tokio::spawn({
        let sup = sup.clone();
        async move { sup.start().await }
    });
    let pid = started(&mut events, "root/p", 1).await?;
    // Its environment shows in /proc a moment after spawn() returns (the
    // exec is past closing descriptors, not yet past laying out memory).
    let mut socket = None;
    eventually("the program's NOTIFY_SOCKET shows", || {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        socket = environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET="))
            .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()));
        socket.is_some()
    })
    .await?;
    let socket = socket.ok_or("the program has a NOTIFY_SOCKET")?;
    let path = socket.to_str().ok_or("a path")?;
    // The test process.
    std::os::unix::net::UnixDatagram::unbound()?.send_to(b"READY=1", &socket)?;
    // A Python process.
    let status = python(&["outsider", path])
        .stdin(Stdio::null())
        .status()
        .await?;
    ensure(
        status.success(),
        format!("python sent its READY=1: {status}"),
    )?;
    // systemd-notify (as root it speaks for its parent, the test process).
    let status = Command::new("systemd-notify")
        .arg("--ready")
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .status()
        .await?;
    ensure(
        status.success(),
        format!("systemd-notify sent its READY=1: {status}"),
    )?;
    if starting.is_finished() {
        return Err(match starting.await? {
            Ok(()) => "an outsider's READY=1 made the program ready".to_owned(),
            Err(e) => format!("the start ended before every outsider spoke: {e}"),
        }
        .into());
    }
    let result = starting.await?;
    ensure(
        result
            == Err(SupervisorError::StartFailed {
                child: "root/p".into(),
                exit: ExitKind::ReadyTimeout,
            }),
        format!("the outsiders did not make it ready: {result:?}"),
    )?;
    let seen = drain(sup, events).await?;
    ensure(
        !seen.iter().any(|e| matches!(e, Event::Ready { .. })),
        format!("no Ready: {seen:?}"),
    )?;
    Ok(())
}

/// `capture_output(true)` makes each stdout/stderr line an `Event::Log`,
/// after the program's `Started`, in order per stream.
async fn captured_output_becomes_log_events_in_order() -> Result<(), Failed> {
    let cmd = sh(
        r#"i=0
        while [ $i -lt 100 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done
        printf 'last, without a newline'"#,
        &[],
    );
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::command("talker", cmd)
                .restart(Restart::Temporary)
                .capture_output(true),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let pid = started_before_any_log(&mut events, "root/talker", 1).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut exit = None;
    while out.len() < 101 || err.len() < 100 || exit.is_none() {
        match until(&mut events, |e| {
            matches!(e, Event::Log { .. } | Event::Exited { .. })
        })
        .await?
        {
            Event::Log {
                child,
                pid: p,
                stream,
                line,
            } => {
                ensure(
                    child == "root/talker" && p == pid,
                    format!("a line of the talker: {child} {p}"),
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
    let mut want_out: Vec<String> = (0..100).map(|i| format!("out {i}")).collect();
    want_out.push("last, without a newline".into());
    let want_err: Vec<String> = (0..100).map(|i| format!("err {i}")).collect();
    ensure(out == want_out, format!("stdout in order: {out:?}"))?;
    ensure(err == want_err, format!("stderr in order: {err:?}"))?;
    ensure(exit == Some(ExitKind::Normal), format!("exit 0: {exit:?}"))?;
    sup.shutdown().await?;
    Ok(())
}

/// On shutdown a program gets its `stop_signal` (default SIGTERM), traps it, exits cleanly.
async fn stop_signal_is_the_one_a_program_gets() -> Result<(), Failed> {
    let spec = |name: &str| {
        ChildSpec::command(name, python(&["traps"]))
            .ready_timeout(Duration::from_secs(20))
            .shutdown(Shutdown::Timeout(Duration::from_secs(20)))
    };
    let sup = Supervisor::builder()
        .name("root")
        .child(spec("term"))
        .child(spec("int").stop_signal(libc::SIGINT))
        .child(spec("usr1").stop_signal(libc::SIGUSR1))
        .build();
    let events = sup.events();
    sup.start().await?;
    sup.shutdown().await?;
    let seen = drain(sup, events).await?;
    let exits: Vec<(&str, &ExitKind)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Exited { child, exit, .. } => Some((child.as_str(), exit)),
            _ => None,
        })
        .collect();
    ensure(
        exits
            == [
                ("root/usr1", &ExitKind::Code(100 + libc::SIGUSR1)),
                ("root/int", &ExitKind::Code(100 + libc::SIGINT)),
                ("root/term", &ExitKind::Code(100 + libc::SIGTERM)),
            ],
        format!("each trapped its own signal, in reverse order: {exits:?}"),
    )?;
    ensure(
        !seen.iter().any(|e| matches!(e, Event::Killed { .. })),
        "none was killed",
    )?;
    Ok(())
}

/// A program's exit 0, exit code and death by signal map to `Normal`, `Code` and `Signal`.
async fn exits_map_to_exit_kinds() -> Result<(), Failed> {
    let temporary = |name: &str, cmd| ChildSpec::command(name, cmd).restart(Restart::Temporary);
    let sup = Supervisor::builder()
        .name("root")
        .child(temporary("zero", Command::new("true")))
        .child(temporary("three", sh("exit 3", &[])))
        .child(temporary("term", sh("kill -s TERM $$", &[])))
        .child(temporary("killed", python(&["kill-self"])))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let mut exits = Vec::new();
    for _ in 0..4 {
        match until(&mut events, |e| matches!(e, Event::Exited { .. })).await? {
            Event::Exited { child, exit, .. } => exits.push((child, exit)),
            _ => unreachable!("matched above"),
        }
    }
    exits.sort_by(|a, b| a.0.cmp(&b.0));
    ensure(
        exits
            == [
                ("root/killed".to_owned(), ExitKind::Signal(libc::SIGKILL)),
                ("root/term".to_owned(), ExitKind::Signal(libc::SIGTERM)),
                ("root/three".to_owned(), ExitKind::Code(3)),
                ("root/zero".to_owned(), ExitKind::Normal),
            ],
        format!("each exit as it happened: {exits:?}"),
    )?;
    eventually("temporary children are gone once they ended", || {
        sup.which_children().is_empty()
    })
    .await?;
    sup.shutdown().await?;
    Ok(())
}

/// A program that does not exist fails `start()` and `start_child` with `SpawnFailed`.
async fn a_missing_program_fails_with_spawn_failed() -> Result<(), Failed> {
    let missing = || Command::new("/nonexistent/no-such-program");
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("first", serve, ()).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::command("missing", missing()))
        .build();
    let mut events = sup.events();
    let result = sup.start().await;
    ensure(
        matches!(
            &result,
            Err(SupervisorError::StartFailed { child, exit: ExitKind::SpawnFailed(_) })
                if child == "root/missing"
        ),
        format!("StartFailed with SpawnFailed: {result:?}"),
    )?;
    let first = started(&mut events, "root/first", 1).await?;
    let (pid, _) = exited(&mut events, "root/first").await?;
    ensure(
        pid == first && !is_running(first),
        "the first child was stopped",
    )?;
    let seen = drain(sup, events).await?;
    ensure(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Started { child, .. } if child == "root/missing")),
        format!("the missing program never started: {seen:?}"),
    )?;

    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("first", serve, ()).ready_timeout(Duration::from_secs(10)))
        .start()
        .await?;
    let result = sup
        .start_child(ChildSpec::command("missing", missing()))
        .await;
    ensure(
        matches!(
            &result,
            Err(SupervisorError::StartFailed { child, exit: ExitKind::SpawnFailed(_) })
                if child == "root/missing"
        ),
        format!("start_child fails with SpawnFailed: {result:?}"),
    )?;
    let names: Vec<String> = sup.which_children().into_iter().map(|c| c.name).collect();
    ensure(names == ["first"], format!("not kept: {names:?}"))?;
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "readiness_gates_the_next_child",
            Duration::from_secs(30),
            readiness_gates_the_next_child,
        ),
        case(
            "python_speaks_sd_notify_and_its_watchdog",
            Duration::from_secs(40),
            python_speaks_sd_notify_and_its_watchdog,
        ),
        case(
            "systemd_notify_pings_keep_a_program_alive",
            Duration::from_secs(40),
            systemd_notify_pings_keep_a_program_alive,
        ),
        case(
            "never_ready_fails_the_start",
            Duration::from_secs(30),
            never_ready_fails_the_start,
        ),
        case(
            "ready_from_outside_the_group_is_ignored",
            Duration::from_secs(30),
            ready_from_outside_the_group_is_ignored,
        ),
        case(
            "captured_output_becomes_log_events_in_order",
            Duration::from_secs(30),
            captured_output_becomes_log_events_in_order,
        ),
        case(
            "stop_signal_is_the_one_a_program_gets",
            Duration::from_secs(40),
            stop_signal_is_the_one_a_program_gets,
        ),
        case(
            "exits_map_to_exit_kinds",
            Duration::from_secs(30),
            exits_map_to_exit_kinds,
        ),
        case(
            "a_missing_program_fails_with_spawn_failed",
            Duration::from_secs(30),
            a_missing_program_fails_with_spawn_failed,
        ),
    ]
}
