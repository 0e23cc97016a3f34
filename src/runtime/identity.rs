//! Who this process is: its name, its place among its parent's children,
//! its authkey, and whether it is a child of this library at all.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// This process, as the library sees it.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) name: String,
    pub(crate) path: Vec<u32>,
    pub(crate) authkey: Vec<u8>,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: Option<u32>,
}

static CURRENT: OnceLock<Current> = OnceLock::new();

/// Records who this child is; called by the bootstrap before any user code.
pub(crate) fn set_current(current: Current) {
    let _ = CURRENT.set(current);
}

pub(crate) fn current() -> &'static Current {
    CURRENT.get_or_init(|| {
        let mut authkey = vec![0u8; 32];
        if let Err(e) = getrandom::fill(&mut authkey) {
            tracing::warn!(error = %e, "no randomness for the authkey; using the pid");
            authkey = std::process::id().to_be_bytes().repeat(8);
        }
        Current {
            name: "MainProcess".to_owned(),
            path: Vec::new(),
            authkey,
            daemon: false,
            parent_pid: None,
        }
    })
}

/// Python's `_process_counter`: numbers the children this process creates.
static COUNTER: AtomicU32 = AtomicU32::new(1);

/// The name of a child is now fixed at creation: `Process-1`, or
/// `Process-2:1` for the first child of `Process-2`.
pub(crate) fn next_identity() -> (String, Vec<u32>) {
    let mut path = current().path.clone();
    path.push(COUNTER.fetch_add(1, Ordering::Relaxed));
    let digits: Vec<String> = path.iter().map(u32::to_string).collect();
    (format!("Process-{}", digits.join(":")), path)
}

/// Set by `init`: a binary that never called it must not spawn copies of
/// itself, which would run its whole `main` again.
static INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// Records that the program called `init()`.
pub(crate) fn mark_init_called() {
    INIT_CALLED.store(true, Ordering::Relaxed);
}

/// Whether the program called `init()`.
pub(crate) fn init_called() -> bool {
    INIT_CALLED.load(Ordering::Relaxed)
}

/// A random value for a child's handshake.
pub(crate) fn nonce() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(u64::from_ne_bytes(b))
}
