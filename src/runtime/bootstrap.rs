//! The child's side: recognise that we are a child, take the control
//! socket, check the handshake, run the target, report, and exit.
//!
//! See `docs/protocol.md` for the handshake.

use std::time::Duration;

use std::sync::{Mutex, OnceLock, PoisonError};

use super::exec::{CHILD_ENV, parse_marker};
use super::forkserver::server;
use super::identity::{Current, set_current};
use super::logs;
use super::watch::Note;
use crate::sys::{self, OwnedHandle};
use crate::target::{Resolved, fingerprint, resolve};
use crate::transport::blocking::{BlockingChannel, FrameReader};
use crate::wire::ChannelError;
use crate::wire::message::{
    ChildMsg, Group, Hello, Identity, MAGIC, Outcome, PROTOCOL_VERSION, ParentMsg, TargetRef,
};

/// What a child applies when its target has returned: the exit rule,
/// handed down by `init`.
static EXIT_RULE: OnceLock<fn()> = OnceLock::new();

/// Exit code of a child that refused its handshake.
const REFUSED_EXIT: i32 = 2;

/// How long a child waits for its orders before it gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// If this process is a child started by this library, runs what the
/// parent asks and exits; otherwise returns at once.
pub(crate) fn run_if_child(exit_rule: fn()) {
    let Some(value) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let _ = EXIT_RULE.set(exit_rule);
    let Some((at, nonce)) = value.to_str().and_then(parse_marker) else {
        super::logs::warn_when_heard(format!(
            "ignoring a malformed {CHILD_ENV}; running as a parent"
        ));
        return;
    };
    let control = match sys::claim_control(at) {
        Ok(control) => control,
        Err(why) => {
            // A stale or forged value: not our child. Never run anything.
            // Said when a subscriber can hear it: `init()` usually runs
            // before one is installed.
            super::logs::warn_when_heard(format!(
                "{CHILD_ENV} is set but its control channel ({at}) is not a control socket from our parent \
                 ({why}); running as a parent (a stale environment: unset {CHILD_ENV})"
            ));
            return;
        }
    };
    // From here on this process is a child and never returns to `main`.
    let (sock, parent_gone) = (control.fd, control.parent_gone);
    let code = if tokio::runtime::Handle::try_current().is_ok() {
        // `init()` was called inside a runtime (`#[tokio::main]`): run the
        // child on a thread of its own, outside that runtime's context.
        std::thread::Builder::new()
            .name("tokio-multiprocessing-child".to_owned())
            .spawn(move || child_main(sock, nonce, parent_gone, None))
            .map(|t| t.join().unwrap_or(1))
            .unwrap_or(1)
    } else {
        child_main(sock, nonce, parent_gone, None)
    };
    std::process::exit(code);
}

fn refuse(ch: &BlockingChannel, reason: String) -> i32 {
    eprintln!("tokio-multiprocessing: this child refuses to run: {reason}");
    let _ = ch.send(&ChildMsg::Refused { reason });
    REFUSED_EXIT
}

/// The largest `Hello` a child accepts before it knows the real limit.
const HELLO_MAX: usize = 4096;

/// A child's life after it has its control socket: handshake, orders,
/// target, report. Returns the exit code. Also the entry of children forked
/// by the fork server.
///
/// `parent_gone` is the pid of a parent that made the socket and exited
/// before this child started: the orders it left are still read, and only
/// a detached child, which is meant to outlive its parent, runs them.
///
/// A child the fork server forked (`forked`, with the group it was forked
/// into) may be a spare, forked ahead of its start: it waits for its
/// `Hello` as long as the parent keeps its end open, and leaves without a
/// word when the parent closes it (the parent's exit rule, or its death).
/// It gets ready for its target while it waits (see [`get_ready`]).
pub(crate) fn child_main(
    sock: OwnedHandle,
    nonce: u64,
    parent_gone: Option<i32>,
    forked: Option<Group>,
) -> i32 {
    // The frame limit is not known before the `Hello`; it is set below.
    let mut ch = BlockingChannel::new(sock, HELLO_MAX);
    if let Some(group) = forked {
        get_ready(group);
    }
    let forked = forked.is_some();
    let _ = ch.set_read_timeout((!forked).then_some(HANDSHAKE_TIMEOUT));
    let mut reader = FrameReader::new(HELLO_MAX);
    let hello: Hello = match reader.recv(&ch) {
        Ok(h) => h,
        // A spare let go, unused (its announcement unread, hence a reset).
        Err(e) if forked && e.peer_left() => return REFUSED_EXIT,
        Err(e) => {
            eprintln!("tokio-multiprocessing: child could not read its handshake: {e}");
            return REFUSED_EXIT;
        }
    };
    if forked {
        // The start has come: the program's name again, in `ps`.
        super::forkserver::restore_program_name();
        let _ = ch.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    }
    let max_frame = usize::try_from(hello.max_frame).unwrap_or(usize::MAX);
    ch.max_frame = max_frame;
    let refusal = if hello.magic != MAGIC {
        Some("the handshake is not from tokio-multiprocessing".to_owned())
    } else if hello.version != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} but this child speaks {PROTOCOL_VERSION}",
            hello.version
        ))
    } else if hello.fingerprint != fingerprint() {
        Some("the parent runs a different build of this program".to_owned())
    } else if hello.nonce != nonce {
        Some("the handshake nonce does not match the environment".to_owned())
    } else {
        None
    };
    if let Some(reason) = refusal {
        return refuse(&ch, reason);
    }
    reader.set_max_frame(max_frame);
    let orders: ParentMsg = match reader.recv(&ch) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tokio-multiprocessing: child could not read its orders: {e}");
            return REFUSED_EXIT;
        }
    };
    let _ = ch.set_read_timeout(None);
    match orders {
        ParentMsg::Run {
            id,
            identity,
            target,
            args,
            fds,
        } => {
            if let (Some(pid), false) = (parent_gone, identity.detached) {
                eprintln!(
                    "tokio-multiprocessing: this child does not run: the parent that \
                     started it (pid {pid}) has exited"
                );
                return REFUSED_EXIT;
            }
            let mut fds = match take_handles(&mut reader, &ch, fds) {
                Ok(fds) => fds,
                Err(e) => return refuse(&ch, e.to_string()),
            };
            drop(reader);
            if identity.capture_output && !sys::OUTPUT_AT_SPAWN {
                // The first two are the pipes of our stdout and stderr: in
                // place before anything else is written.
                if fds.len() < 2 {
                    return refuse(&ch, "output capture without its two pipes".to_owned());
                }
                let mut pipes = fds.drain(..2);
                let (out, err) = (pipes.next(), pipes.next());
                drop(pipes);
                if let (Some(out), Some(err)) = (out, err)
                    && let Err(e) = sys::redirect_stdout_stderr(out, err)
                {
                    return refuse(&ch, format!("could not capture the output: {e}"));
                }
            }
            run_target(ch, id, identity, target, &args, fds)
        }
        ParentMsg::Serve => server::serve(ch, forked_child_main),
        ParentMsg::Fork { .. } => refuse(&ch, "a fork request before any orders".to_owned()),
        ParentMsg::Handles { .. } => refuse(&ch, "handles before any orders".to_owned()),
    }
}

/// The `n` handles that the arguments of the orders carry: on Unix the
/// descriptors that came with the orders (`SCM_RIGHTS`); on Windows the
/// handles the parent put in this process's table, named by the frame
/// that follows the orders.
fn take_handles(
    reader: &mut FrameReader,
    ch: &BlockingChannel,
    n: u32,
) -> Result<Vec<OwnedHandle>, ChannelError> {
    #[cfg(unix)]
    {
        let _ = ch;
        reader.take_fds(n as usize)
    }
    #[cfg(windows)]
    {
        if n == 0 {
            return Ok(Vec::new());
        }
        let values = match reader.recv(ch)? {
            ParentMsg::Handles { values } if values.len() == n as usize => values,
            other => {
                return Err(ChannelError::Malformed(format!(
                    "expected the {n} handles of the orders, got {other:?}"
                )));
            }
        };
        values
            .into_iter()
            // SAFETY: the parent put each of these in our table for us
            // (`Child::give_handle`) and names each once, in the frame
            // that follows our orders on our own control channel.
            .map(|v| unsafe { sys::take_given_handle(v) }.map_err(ChannelError::Io))
            .collect()
    }
}

/// The entry of a child forked by the fork server.
fn forked_child_main(sock: OwnedHandle, nonce: u64, group: Group) -> i32 {
    child_main(sock, nonce, None, Some(group))
}

/// What a forked child does before its orders come, so that a spare does
/// it before its start rather than on the start's path: the first touch of
/// the stack and heap it is about to use (each first write to a page
/// shared with the fork server costs a copy).
///
/// A forked child outside a session of its own needs no parent watcher:
/// the fork server tied it to the program with the kernel's parent-death
/// signal (see `server`), which costs no thread to start nor to stop at
/// exit. Only a child in a session of its own can be detached.
fn get_ready(group: Group) {
    if group != Group::Session {
        TIED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    touch_stack();
    drop(std::hint::black_box(vec![1u8; WARM_HEAP]));
}

/// How much heap a spare touches ahead of its start: about what a start
/// allocates (frame buffers, identity, the outcome), and below the C
/// library's trim threshold, so that it stays mapped once freed.
const WARM_HEAP: usize = 64 * 1024;

/// Writes to the stack pages below this frame that a start goes on to
/// use.
#[inline(never)]
fn touch_stack() {
    let mut pages = [0u8; 64 * 1024];
    for page in pages.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&mut pages);
}

fn run_target(
    ch: BlockingChannel,
    id: u64,
    identity: Identity,
    target: TargetRef,
    args: &[u8],
    fds: Vec<OwnedHandle>,
) -> i32 {
    // The child's environment and directory, before any thread of ours
    // starts (the parent watcher, the log writer) and before the target.
    if let Err(reason) = enter_setting(&identity.env, identity.current_dir.as_deref()) {
        return refuse(&ch, reason);
    }
    let log_level = identity.log_level;
    set_current(Current {
        name: identity.name,
        path: identity.path,
        authkey: identity.authkey.into_vec(),
        daemon: identity.daemon,
        parent_pid: Some(identity.parent_pid),
    });
    if identity.detached && TIED.load(std::sync::atomic::Ordering::Relaxed) {
        // Cannot happen (a detached child is forked into a session of its
        // own, and such a child is not tied); refused rather than tied to
        // a parent it must outlive.
        return refuse(&ch, "a detached child is tied to its parent".to_owned());
    }
    if !identity.detached {
        watch_parent(&ch);
    }
    CONTROL_FD.store(ch.number(), std::sync::atomic::Ordering::Relaxed);
    // A child that forwards its logs leaves its panics to the parent to
    // report (from the outcome); otherwise it prints them as usual.
    crate::target::panic::install_hook(identity.log_level == 0);
    // From here on every frame to the parent goes through one lock: the
    // notes of a supervised child may come from any thread while the
    // target runs, and frames must never interleave.
    let ch = CHANNEL.get_or_init(|| Mutex::new(ch));
    SUPERVISED.store(identity.supervised, std::sync::atomic::Ordering::Relaxed);
    // The child's `tracing` events go to the parent, up to its level.
    let forwarding = logs::child::install(
        log_level,
        Box::new(|msg| {
            CHANNEL.get().is_some_and(|ch| {
                ch.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .send(msg)
                    .is_ok()
            })
        }),
    );

    // SAFETY: the handshake above proved that the parent runs this very
    // build (magic, protocol version and build fingerprint match, and the
    // nonce matches the one our parent gave us through a channel only it
    // and we hold), and `target` came from that parent's
    // `Target::__target_ref`.
    let entry = unsafe { resolve(target) };
    // The handles in the arguments take their descriptors as they decode,
    // which the trampolines do first thing (an async one before it returns
    // its future).
    let started = crate::transport::handle::provide_handles(fds, move || match entry {
        Resolved::Sync(entry) => Err(crate::target::call_sync(entry, args)),
        Resolved::Async(entry) => Ok(entry(args)),
    });
    let outcome = match started {
        Err(outcome) => outcome,
        Ok(future) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(move || {
                if let Some(forwarding) = &forwarding {
                    forwarding.enter_thread();
                }
            })
            .build()
        {
            Ok(rt) => rt.block_on(future),
            Err(e) => Outcome::Panicked(crate::wire::PanicInfo {
                message: format!("could not build a Tokio runtime in the child: {e}"),
                location: None,
                backtrace: None,
            }),
        },
    };
    let mut code = match outcome {
        Outcome::Returned(_) => 0,
        _ => 1,
    };
    // What the target logged reaches the parent before its outcome.
    let _ = logs::child::flush(LOG_FLUSH);
    let msg = ChildMsg::Outcome { id, outcome };
    let ch = ch.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(ChannelError::Oversized { len, max }) = ch.send(&msg) {
        drop(msg);
        let outcome = Outcome::EncodeResult(format!(
            "the return value needs a frame of {len} bytes, over the maximum of {max}"
        ));
        let _ = ch.send(&ChildMsg::Outcome { id, outcome });
        code = 1;
    }
    drop(ch);
    // Python's exit rule, inside the child too.
    if let Some(exit_rule) = EXIT_RULE.get() {
        exit_rule();
    }
    let unsent = logs::child::flush(LOG_FLUSH);
    if unsent > 0 {
        // The parent is not reading: say so where it can still be seen.
        eprintln!(
            "tokio-multiprocessing: {unsent} log events of this child were not forwarded \
             before it exited: the parent did not read them in time"
        );
    }
    code
}

/// Applies the environment changes and enters the directory the parent
/// set; says why not when it cannot.
fn enter_setting(
    env: &[(std::ffi::OsString, Option<std::ffi::OsString>)],
    dir: Option<&std::ffi::OsStr>,
) -> Result<(), String> {
    sys::apply_env(env).map_err(|e| format!("could not set its environment: {e}"))?;
    if let Some(dir) = dir {
        std::env::set_current_dir(dir).map_err(|e| {
            format!(
                "could not enter its current_dir {}: {e}",
                std::path::Path::new(dir).display()
            )
        })?;
    }
    Ok(())
}

/// How long a child waits, at its end, for its logs to reach the parent.
const LOG_FLUSH: Duration = Duration::from_secs(2);

/// The control channel of this child, once its target runs.
static CHANNEL: OnceLock<Mutex<BlockingChannel>> = OnceLock::new();

/// Whether this child was started by a `Supervisor`.
static SUPERVISED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells this child's supervisor `note` (readiness, a heartbeat). Returns
/// whether it went: false in a process that is not a supervised child, or
/// when the parent is gone.
pub(crate) fn notify(note: Note) -> bool {
    if !SUPERVISED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let Some(ch) = CHANNEL.get() else {
        return false;
    };
    let msg = match note {
        Note::Ready => ChildMsg::Ready,
        Note::Heartbeat => ChildMsg::Heartbeat,
    };
    ch.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(&msg)
        .is_ok()
}

/// Exits this process as soon as the parent's end of the control channel
/// closes, which happens when the parent dies, however it dies.
fn watch_parent(ch: &BlockingChannel) {
    if TIED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Ok(watch) = ch.try_clone_handle() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("tokio-multiprocessing-parent-watch".to_owned())
        // It only polls one descriptor: a small stack is cheaper to map.
        .stack_size(64 * 1024)
        .spawn(move || {
            sys::wait_peer_closed(&watch);
            sys::exit_immediately(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the parent watcher thread");
    }
}

/// Whether this child dies with its parent already: by the parent
/// watcher's thread, or by the kernel's parent-death signal.
static TIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The control socket's descriptor in this child, for tests that play a
/// misbehaving child.
static CONTROL_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Test hook: in a child started by this library, the descriptor of its control
/// channel to the parent; `None` in a parent. For tests that must write
/// malformed frames on purpose; writing to it otherwise breaks the child's
/// report.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub fn __control_fd() -> Option<i32> {
    match CONTROL_FD.load(std::sync::atomic::Ordering::Relaxed) {
        -1 => None,
        fd => Some(fd),
    }
}
