//! The contract of `sys`, checked against the backend in use: each test
//! uses only the names `sys/mod.rs` declares, so a second backend passes
//! the same suite.
// Part of the suite is Unix only for now (see docs/windows.md): its
// imports go unused on Windows.
#![cfg_attr(windows, allow(unused_imports))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::futex::{self, Wait};
use super::proc::{self, Liveness, ProcId};
use super::stream::{self, Wait as Ready};
use super::*;

/// A child of this process that nothing else waits for: `sleep` for
/// `secs`, adopted as a `Child`.
#[cfg(unix)]
fn sleeping_child(secs: &str) -> Child {
    let spawned = std::process::Command::new("sleep")
        .arg(secs)
        .spawn()
        .expect("sleep");
    // Dropping the standard library's handle neither waits nor kills:
    // the child is ours to reap.
    let pid = spawned.id();
    drop(spawned);
    Child::adopt(pid)
}

/// On Windows: this test binary, running [`sleeper`] alone.
#[cfg(windows)]
fn sleeping_child(secs: &str) -> Child {
    let spawned = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["--exact", "sys::tests::sleeper", "--ignored"])
        .env("MP_CONTRACT_SLEEP", secs)
        .spawn()
        .expect("sleeper");
    let pid = spawned.id();
    // Adopted while the standard library's handle keeps it named.
    let child = Child::adopt(pid);
    drop(spawned);
    child
}

/// Run by `sleeping_child` on Windows in a child: sleeps as long as
/// `MP_CONTRACT_SLEEP` says, in seconds.
#[cfg(windows)]
#[test]
#[ignore = "a helper the contract tests run in a child"]
fn sleeper() {
    let secs: f64 = std::env::var("MP_CONTRACT_SLEEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs_f64(secs));
}

/// What `python_exitcode` gives a child ended by `Signal::Kill`: `-9`,
/// or `-15` on Windows, where both requests are `TerminateProcess`.
const KILLED: i32 = if cfg!(windows) { -15 } else { -9 };

#[test]
fn a_socketpair_carries_bytes_both_ways_and_tells_of_a_close() {
    let (a, b) = socketpair().unwrap();
    assert_eq!(stream::send(&a, b"ping", true).unwrap(), 4);
    assert!(stream::wait(&b, Ready::Readable, Some(Duration::from_secs(5))).unwrap());
    let mut buf = BytesMut::new();
    assert_eq!(stream::recv_into(&b, &mut buf, 64, false).unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
    let err = stream::recv_into(&b, &mut buf, 64, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(!peer_closed(&b));
    let a2 = a.try_clone().unwrap();
    drop(a);
    assert!(!peer_closed(&b), "a copy of the other end is still open");
    drop(a2);
    assert!(peer_closed(&b));
    wait_peer_closed(&b);
    assert_eq!(stream::recv_into(&b, &mut buf, 64, true).unwrap(), 0);
}

// Unix only for now: see docs/windows.md.
#[cfg(unix)]
#[test]
fn a_handle_travels_in_a_message() {
    let (a, b) = socketpair().unwrap();
    let (x, y) = socketpair().unwrap();
    let sent = scm::send_with_fds(
        std::os::fd::AsFd::as_fd(&a),
        &[std::io::IoSlice::new(b"h")],
        &[std::os::fd::AsFd::as_fd(&x)],
    )
    .unwrap();
    assert_eq!(sent, 1);
    drop(x);
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let n = scm::recv_with_fds(std::os::fd::AsFd::as_fd(&b), &mut byte, &mut got).unwrap();
    assert_eq!((n, got.len()), (1, 1));
    // The received handle is the same socket: it reaches `y`.
    stream::send(&got[0], b"via", true).unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(stream::recv_into(&y, &mut buf, 8, true).unwrap(), 3);
}

/// On Windows a handle travels inside the bytes: a token its receiver
/// takes once (here, a receiver in this same process).
#[cfg(windows)]
#[test]
fn a_handle_travels_in_a_message() {
    let (x, y) = socketpair().unwrap();
    let (pid, value) = handle_token(&x).unwrap();
    drop(x);
    let got = claim_handle_token(pid, value).unwrap();
    assert!(
        claim_handle_token(pid, value).is_err(),
        "a token is taken once"
    );
    // The received handle is the same pipe: it reaches `y`.
    stream::send(&got, b"via", true).unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(stream::recv_into(&y, &mut buf, 8, true).unwrap(), 3);
}

#[test]
fn a_child_is_watched_signalled_and_reaped() {
    let child = sleeping_child("30");
    assert!(child.pid() > 0);
    assert!(child.try_reap().unwrap().is_none(), "still running");
    assert!(!child.wait_exited_timeout_blocking(Duration::from_millis(50)));
    child.signal(Signal::Kill).unwrap();
    child.wait_exited_blocking(None);
    let status = child.try_reap().unwrap().expect("reaped");
    assert_eq!(python_exitcode(status), KILLED);
    assert_eq!(signal_name(9), "SIGKILL");

    let child = sleeping_child("30");
    signal_pid(child.pid(), Signal::Terminate).unwrap();
    assert!(child.wait_exited_timeout_blocking(Duration::from_secs(10)));
    assert_eq!(python_exitcode(child.try_reap().unwrap().unwrap()), -15);
}

#[tokio::test]
async fn a_child_s_end_is_a_future() {
    let child = sleeping_child("0.05");
    tokio::time::timeout(Duration::from_secs(10), child.exited())
        .await
        .expect("exited in time")
        .unwrap();
    assert_eq!(python_exitcode(child.try_reap().unwrap().unwrap()), 0);
}

#[test]
fn a_shared_mapping_is_shared_and_keeps_its_size() {
    let h = shm::create(c"tokio-mp-contract", 4096).unwrap();
    assert_eq!(shm::size(&h).unwrap(), 4096);
    assert!(shm::is_sealed(&h).unwrap());
    let a = shm::Mapping::new(&h, 4096).unwrap();
    let b = shm::Mapping::new(&h.try_clone().unwrap(), 4096).unwrap();
    a.u32_at(64).store(7, Ordering::Relaxed);
    assert_eq!(b.u32_at(64).load(Ordering::Relaxed), 7);
    b.u64_at(128).fetch_add(5, Ordering::Relaxed);
    assert_eq!(a.u64_at(128).load(Ordering::Relaxed), 5);
    assert_eq!(a.len(), 4096);
}

#[test]
fn a_named_block_is_found_by_name_until_unlinked() {
    let name =
        std::ffi::CString::new(format!("/tokio-mp-contract-{}", std::process::id())).unwrap();
    let h = shm::create_named(&name, 100).unwrap();
    // Windows tells a section's size by the page.
    let size = if cfg!(windows) { 4096 } else { 100 };
    assert_eq!(shm::size(&h).unwrap(), size, "the size asked");
    let err = shm::create_named(&name, 100).unwrap_err();
    assert!(shm::is_exists(&err), "{err}");
    let other = shm::open_named(&name).unwrap();
    let a = shm::Mapping::new(&h, 100).unwrap();
    let b = shm::Mapping::new(&other, 100).unwrap();
    a.u64_at(8).store(9, Ordering::Relaxed);
    assert_eq!(b.u64_at(8).load(Ordering::Relaxed), 9);
    shm::unlink_named(&name).unwrap();
    if cfg!(windows) {
        // The name goes with the last handle, not with unlink.
        drop((h, other));
    }
    assert!(shm::open_named(&name).is_err());
    assert_eq!(
        b.u64_at(8).load(Ordering::Relaxed),
        9,
        "mapped after unlink"
    );
}

#[test]
fn a_sleeper_on_a_word_wakes_when_told_or_times_out() {
    let word = Arc::new(AtomicU32::new(0));
    let t0 = Instant::now();
    assert_eq!(
        futex::wait(&word, 0, Some(Duration::from_millis(30))),
        Wait::TimedOut
    );
    assert!(t0.elapsed() >= Duration::from_millis(25));
    assert_eq!(futex::wait(&word, 1, None), Wait::Changed, "not the value");
    let sleeper = {
        let word = word.clone();
        std::thread::spawn(move || {
            while word.load(Ordering::Acquire) == 0 {
                futex::wait(&word, 0, Some(Duration::from_secs(10)));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    word.store(1, Ordering::Release);
    futex::wake_all(&word);
    sleeper.join().unwrap();
}

#[test]
fn a_process_is_alive_until_it_is_reaped() {
    let me = proc::me();
    assert_eq!(me.pid, std::process::id());
    assert_eq!(proc::liveness(me, true), Liveness::Alive);
    let child = sleeping_child("30");
    let who = ProcId {
        pid: child.pid(),
        start: 0,
    };
    assert_eq!(proc::liveness(who, false), Liveness::Alive);
    child.signal(Signal::Kill).unwrap();
    child.wait_exited_blocking(None);
    assert_eq!(proc::liveness(who, false), Liveness::Dead, "a zombie");
    child.try_reap().unwrap();
    assert_eq!(proc::liveness(who, false), Liveness::Dead);
}

// Unix only for now: see docs/windows.md.
#[cfg(unix)]
#[test]
fn only_a_socket_from_our_parent_is_claimed() {
    // A number that is not open.
    assert!(matches!(
        claim_control_socket(1_000_000),
        Err(NotOurs::Closed)
    ));
    // A file is not a socket.
    let f = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    assert!(matches!(claim_control_socket(fd), Err(NotOurs::NotASocket)));
}

/// On Windows the locator names a process and a handle in it: nonsense,
/// a process that does not exist and a value that names no handle are
/// each refused.
#[cfg(windows)]
#[test]
fn only_a_handle_from_our_parent_is_claimed() {
    assert!(matches!(claim_control("3"), Err(NotOurs::NotAHandle(_))));
    assert!(matches!(
        claim_control("handle 4294967295 4"),
        Err(NotOurs::NoParent(_))
    ));
    let nothing = format!("handle {} 999999", std::process::id());
    assert!(matches!(
        claim_control(&nothing),
        Err(NotOurs::NotAHandle(_))
    ));
}

#[test]
fn this_program_has_an_identity_and_a_command_line() {
    let a = exe_identity().unwrap();
    assert_eq!(a, exe_identity().unwrap());
    assert!(!own_argv().is_empty());
    let changes = [
        ("TOKIO_MP_CONTRACT_SET".into(), Some("x".into())),
        ("PATH".into(), None),
        ("TOKIO_MP_CONTRACT".into(), Some("ignored".into())),
    ];
    let env = child_env("TOKIO_MP_CONTRACT", &changes, ("TOKIO_MP_CONTRACT", "1"));
    let has = |entry: &str| env.iter().any(|kv| kv.to_str() == Ok(entry));
    assert!(has("TOKIO_MP_CONTRACT=1") && has("TOKIO_MP_CONTRACT_SET=x"));
    assert!(!has("TOKIO_MP_CONTRACT=ignored"));
    assert!(!env.iter().any(|kv| kv.to_bytes().starts_with(b"PATH=")));
    // What the process holds already changes nothing (no thread check).
    apply_env(&[("PATH".into(), std::env::var_os("PATH"))]).unwrap();
    // A change beside other threads (the test harness's) is refused.
    let _other = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
    assert!(apply_env(&[("TOKIO_MP_CONTRACT_NEVER".into(), Some("x".into()))]).is_err());
    assert!(std::env::var_os("TOKIO_MP_CONTRACT_NEVER").is_none());
    assert!(thread_count() >= 1);
}

// Unix only for now: see docs/windows.md.
#[cfg(unix)]
#[test]
fn a_tied_program_leads_its_group_and_dies_with_the_thread_that_started_it() {
    // Started from a thread of its own, which then ends: the program is
    // killed as if this process had died.
    let pid = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut command = tokio::process::Command::new("sleep");
            command.arg("30").kill_on_drop(false);
            own_group_tied_to_us(&mut command);
            let child = command.spawn().unwrap();
            let pid = child.id().unwrap();
            assert!(group_exists(pid), "it leads a group of its own");
            pid
        })
    })
    .join()
    .unwrap();
    let child = Child::adopt(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_reap().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.signal(Signal::Kill).unwrap();
            panic!("the program outlived the thread that started it");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(python_exitcode(status), -9, "killed by SIGKILL");
    assert!(!group_exists(pid), "its group went with it");
}

/// A child of ours leading a group of its own (on Windows, in a job of
/// its own), sleeping for `secs`.
#[cfg(unix)]
fn sleeping_group_leader(secs: &str) -> Child {
    use std::os::unix::process::CommandExt as _;
    let spawned = std::process::Command::new("sleep")
        .arg(secs)
        .process_group(0)
        .spawn()
        .expect("sleep");
    let pid = spawned.id();
    drop(spawned);
    Child::adopt(pid)
}

/// A child of ours leading a group of its own (on Windows, in a job of
/// its own), sleeping for `secs`: this test binary running [`sleeper`].
#[cfg(windows)]
fn sleeping_group_leader(secs: &str) -> Child {
    let (_ours, theirs) = socketpair().unwrap();
    let argv: Vec<std::ffi::CString> = ["test", "--exact", "sys::tests::sleeper", "--ignored"]
        .iter()
        .map(|a| std::ffi::CString::new(*a).unwrap())
        .collect();
    let mut env: Vec<std::ffi::CString> = std::env::vars()
        .filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok())
        .collect();
    env.push(std::ffi::CString::new(format!("MP_CONTRACT_SLEEP={secs}")).unwrap());
    Child::spawn(theirs, &argv, &env, Group::Own, None).expect("spawn")
}

#[test]
fn a_group_exists_while_a_member_lives_and_not_once_only_a_zombie_is_left() {
    let child = sleeping_group_leader("30");
    let pid = child.pid();
    assert!(group_exists(pid), "its sleeping leader");
    child.signal(Signal::Kill).unwrap();
    // Dead, and a zombie until reaped.
    child.wait_exited_blocking(None);
    assert_eq!(
        proc::liveness(ProcId { pid, start: 0 }, false),
        Liveness::Dead
    );
    assert!(!group_exists(pid), "a zombie holds nothing");
    child.try_reap().unwrap();
    assert!(!group_exists(pid));
}

#[test]
fn a_pipe_carries_bytes_to_its_async_reader_until_every_writer_is_gone() {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (read, write) = pipe().unwrap();
        let mut reader = pipe_reader(read).unwrap();
        let copy = write.try_clone().unwrap();
        #[cfg(unix)]
        let file = std::fs::File::from(write);
        #[cfg(windows)]
        let file = std::fs::File::from(write.into_std());
        std::io::Write::write_all(&mut &file, b"line\n").unwrap();
        drop(file);
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"line\n");
        // A copy of the writing end still open: no end of stream yet.
        let early = tokio::time::timeout(Duration::from_millis(50), reader.read(&mut buf)).await;
        assert!(early.is_err(), "no end while a writer is open");
        drop(copy);
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
    });
}

/// Run by [`a_child_created_with_pipes_writes_its_output_into_them`] in a
/// child: a line on each stream.
#[test]
#[ignore = "a helper the contract tests run in a child"]
fn printer() {
    println!("to stdout");
    eprintln!("to stderr");
}

#[test]
fn a_child_created_with_pipes_writes_its_output_into_them() {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let (_ours, theirs) = socketpair().unwrap();
        let argv: Vec<std::ffi::CString> = [
            "test",
            "--exact",
            "sys::tests::printer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .iter()
        .map(|a| std::ffi::CString::new(*a).unwrap())
        .collect();
        let env: Vec<std::ffi::CString> = std::env::vars()
            .filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok())
            .collect();
        let child =
            Child::spawn(theirs, &argv, &env, Group::Inherit, Some((out_w, err_w))).expect("spawn");
        // Both ends are the child's alone now: each stream ends when it exits.
        let read_all = |r| async move {
            let mut reader = pipe_reader(r).unwrap();
            let mut text = String::new();
            reader.read_to_string(&mut text).await.unwrap();
            text
        };
        let both = async { tokio::join!(read_all(out_r), read_all(err_r)) };
        let (out, err) = tokio::time::timeout(Duration::from_secs(60), both)
            .await
            .expect("both streams end within a minute");
        assert!(child.wait_exited_timeout_blocking(Duration::from_secs(20)));
        assert_eq!(child.try_reap().unwrap().map(python_exitcode), Some(0));
        assert!(out.contains("to stdout"), "stdout: {out:?}");
        assert!(!out.contains("to stderr"), "stdout: {out:?}");
        assert!(err.contains("to stderr"), "stderr: {err:?}");
    });
}
