//! [`ProcessBuilder`]: a process's name, flags and start method.

use std::ffi::{OsStr, OsString};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Process, ProcessError, Spec};
use crate::runtime::forkserver::StartMethod;
use crate::runtime::identity::{current, next_identity};
use crate::runtime::watch::ChildState;
use crate::sys::OwnedHandle;
use crate::target::{Target, encode_value, encode_value_within};
use crate::wire::frame::DEFAULT_MAX_FRAME;
use crate::wire::message::{EnvChanges, Identity, TargetRef};

/// Arguments whose encoding grows past this many bytes are encoded again
/// off the runtime's worker thread (see [`encode_args`]).
pub(crate) const LARGE_ARGS: usize = 256 << 10;

/// Encodes a process's arguments, with the descriptors of the handles in
/// them.
///
/// Small arguments are encoded on the calling thread. Past [`LARGE_ARGS`]
/// bytes the encoding stops and starts over, on a worker thread of a
/// multi-thread Tokio runtime under `block_in_place`, so that the worker's
/// other tasks move to another thread for as long as it takes (100 MiB
/// take half a second in release). The value is borrowed and need not be
/// `Send`, so it cannot move to another thread; elsewhere (a
/// `current_thread` runtime, no runtime, the blocking pool) it is encoded
/// where it is.
fn encode_args<A: Serialize>(args: &A) -> (Result<Vec<u8>, String>, Vec<OwnedHandle>) {
    use crate::transport::handle::collect_handles_beside as collect_handles;
    let (first, fds) = collect_handles(|| encode_value_within(args, LARGE_ARGS));
    match first {
        Ok(Some(bytes)) => (Ok(bytes), fds),
        Err(e) => (Err(e), fds),
        Ok(None) => {
            // The descriptors collected so far are duplicates: closed.
            drop(fds);
            off_the_workers(|| collect_handles(|| encode_value(args)))
        }
    }
}

/// Runs `f` so that the Tokio worker thread this may be on hands its other
/// tasks to another thread meanwhile (`block_in_place`); elsewhere, runs it
/// as it is.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if !multi {
        return f();
    }
    // `block_in_place` refuses (with a panic, before it calls `f`) where
    // the thread runs a `current_thread` runtime's `block_on` with a
    // multi-thread runtime's handle entered; `f` then runs here.
    let mut f = Some(f);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| f.take().map(|f| f()))
    })) {
        Ok(Some(value)) => value,
        Ok(None) => unreachable!("block_in_place calls its closure once"),
        Err(panic) => match f.take() {
            Some(f) => f(),
            None => std::panic::resume_unwind(panic),
        },
    }
}

/// Configures a [`Process`] before it is built or started.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # fn work(_: ()) {}
/// # async fn demo() -> mp::Result<()> {
/// let p = mp::Process::builder().name("worker").daemon(true).spawn(work, ()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    detached: bool,
    max_frame: Option<usize>,
    start_method: Option<StartMethod>,
    supervised: bool,
    no_forward_tracing: bool,
    capture_output: bool,
    env: Environment,
}

/// What a child's environment and working directory differ by from its
/// parent's: set by [`ProcessBuilder`] and `PoolBuilder`, applied in the
/// child before its target runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    /// One change per variable, the latest: a value, or `None` to remove it.
    pub(crate) vars: EnvChanges,
    pub(crate) dir: Option<PathBuf>,
}

impl Environment {
    /// Sets `key` to `value` (`None`: removes it), replacing an earlier
    /// change of the same variable.
    pub(crate) fn change(&mut self, key: &OsStr, value: Option<&OsStr>) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.map(OsStr::to_owned)));
    }

    /// The changes as they travel, checked: names and values the child can
    /// set, and the directory made absolute (against this process's
    /// working directory, whatever the fork server's is) and found to be a
    /// directory.
    pub(crate) fn checked(&self) -> Result<(EnvChanges, Option<OsString>), ProcessError> {
        for (key, value) in &self.vars {
            let bytes = key.as_encoded_bytes();
            let why = if bytes.is_empty() {
                Some("an empty name")
            } else if bytes.contains(&b'=') {
                Some("a name with '='")
            } else if bytes.contains(&0) {
                Some("a name with a NUL byte")
            } else if value
                .as_ref()
                .is_some_and(|v| v.as_encoded_bytes().contains(&0))
            {
                Some("a value with a NUL byte")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ProcessError::InvalidEnv(format!("{key:?}: {why}")));
            }
        }
        let dir = match &self.dir {
            None => None,
            Some(dir) => {
                let usable = std::path::absolute(dir).and_then(|abs| {
                    if std::fs::metadata(&abs)?.is_dir() {
                        Ok(abs)
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::NotADirectory,
                            "not a directory",
                        ))
                    }
                });
                match usable {
                    Ok(abs) => Some(abs.into_os_string()),
                    Err(source) => {
                        return Err(ProcessError::CurrentDir {
                            dir: dir.clone(),
                            source,
                        });
                    }
                }
            }
        };
        Ok((self.vars.clone(), dir))
    }
}

impl ProcessBuilder {
    /// The process's name; the default is `Process-N`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemonic process is terminated, not joined, when its parent
    /// leaves `main`, and may not start children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// A detached process outlives its parent: it does not exit when the
    /// parent dies, the exit rule leaves it alone, and it starts in a
    /// session of its own.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// The largest frame accepted on the control channel, in bytes (default
    /// 128 MiB). Arguments and return values must fit.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// How to start this process; the default is the program's
    /// [`get_start_method`](crate::get_start_method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Whether the child's `tracing` events reach this process's subscriber
    /// (default `true`): see [Logs from children](crate#logs-from-children).
    /// Off, the child's events go nowhere, unless it sets up a subscriber of
    /// its own.
    pub fn forward_tracing(mut self, forward: bool) -> Self {
        self.no_forward_tracing = !forward;
        self
    }

    /// Whether the child's standard output and error are captured (default
    /// `false`): each line it writes becomes a `tracing` event here, at
    /// INFO with target `tokio_multiprocessing::child`, inside the child's
    /// `child{process, pid}` span, with a `stream` field (`"stdout"` or
    /// `"stderr"`) and the line as its message. Off, the child writes to
    /// this process's own stdout and stderr.
    ///
    /// The two streams are pipes, in place before the target runs (under
    /// either start method), inherited by what the child starts. Lines
    /// keep their order within each stream; a line longer than 64 KiB
    /// comes in pieces, bytes that are not UTF-8 are replaced, and a last
    /// line without a newline counts. A child that writes faster than this
    /// process reads waits on its pipe; nothing is lost. [`join`] returns
    /// only once both streams have ended, so every line has been emitted
    /// by then, unless some other process (a grandchild) keeps them open:
    /// it waits for that at most 2 s after the child exited.
    ///
    /// [`join`]: crate::Process::join
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// Sets the environment variable `key` to `value` in the child, as
    /// `std::process::Command::env` does; the child's environment is
    /// otherwise its parent's.
    ///
    /// It applies whatever the start method: a re-executed child starts
    /// with it (so it holds from the start of its `main`), and a child of
    /// the fork server sets it before its target runs, while it is still
    /// single-threaded. A later call for the same variable (or
    /// [`env_remove`](Self::env_remove)) replaces this one.
    ///
    /// A name that is empty or holds `=` or a NUL byte, or a value with a
    /// NUL byte, fails [`start`](Process::start) with
    /// [`ProcessError::InvalidEnv`].
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.change(key.as_ref(), Some(value.as_ref()));
        self
    }

    /// Removes the environment variable `key` from the child's
    /// environment, as `std::process::Command::env_remove` does; see
    /// [`env`](Self::env).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.change(key.as_ref(), None);
        self
    }

    /// The child's working directory, as `std::process::Command::current_dir`
    /// sets it; the default is the parent's (for a child of the fork
    /// server too: it is the parent's at [`start`](Process::start)).
    ///
    /// A relative path is taken from the parent's working directory at
    /// `start`. The child enters it before its target runs, whatever the
    /// start method. A path that is not a directory the parent can see
    /// fails `start` with [`ProcessError::CurrentDir`], which names the
    /// directory and why; one the child cannot enter (no permission, or
    /// gone meanwhile) makes it refuse to run, and `join` says why.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.env.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The environment changes of a pool's workers.
    pub(crate) fn environment(mut self, env: Environment) -> Self {
        self.env = env;
        self
    }

    /// A child of a `Supervisor`: it leads a process group of its own, and
    /// its readiness and heartbeats reach [`Process::notes`].
    pub(crate) fn supervised(mut self, supervised: bool) -> Self {
        self.supervised = supervised;
        self
    }

    /// Builds the process without starting it.
    pub fn build<A, R, M, F>(self, target: F, args: A) -> Process<R>
    where
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
    {
        let (args, fds) = encode_args(&args);
        self.build_encoded(target.__target_ref().0, args, fds)
    }

    /// Builds a process from a target and arguments encoded already.
    pub(crate) fn build_encoded<R>(
        self,
        target: TargetRef,
        args: Result<Vec<u8>, String>,
        fds: Vec<OwnedHandle>,
    ) -> Process<R> {
        let (default_name, path) = next_identity();
        let cur = current();
        let identity = Identity {
            name: self.name.unwrap_or(default_name),
            path,
            authkey: cur.authkey.clone().into(),
            daemon: self.daemon,
            detached: self.detached,
            parent_pid: std::process::id(),
            supervised: self.supervised,
            // Set at `start`, from the subscriber this process has then.
            log_level: 0,
            capture_output: self.capture_output,
            // Set at `start`, once checked.
            env: Vec::new(),
            current_dir: None,
        };
        Process {
            state: ChildState::new(&identity.name, self.daemon, self.detached),
            spec: Mutex::new(Some(Spec { target, args, fds })),
            authkey: cur.authkey.clone(),
            identity,
            max_frame: self.max_frame.unwrap_or(DEFAULT_MAX_FRAME),
            start_method: self.start_method,
            forward_tracing: !self.no_forward_tracing,
            env: self.env,
            _result: PhantomData,
        }
    }

    /// Builds the process and starts it.
    ///
    /// # Errors
    ///
    /// As [`Process::start`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped after the child was
    /// spawned, the child runs on, with no handle left to join it (the exit
    /// rule still reaps it).
    pub async fn spawn<A, R, M, F>(
        self,
        target: F,
        args: A,
    ) -> std::result::Result<Process<R>, ProcessError>
    where
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
        R: DeserializeOwned,
    {
        let p = self.build(target, args);
        p.start().await?;
        Ok(p)
    }
}
