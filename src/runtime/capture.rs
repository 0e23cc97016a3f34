//! A child's standard output and error, captured: read as lines, each line
//! a `tracing` event in the parent, labelled with the child.
//!
//! The same line reader serves the children that run a target (their
//! pipes come with their orders, see `docs/protocol.md`) and the programs
//! a supervisor runs (their pipes are `tokio::process`'s).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::oneshot;

use super::logs::{CHILD_TARGET, child_span};
use crate::sys::{self, OwnedHandle};

/// The longest line of captured output; a longer one comes in pieces.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Which of a child's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

impl Stream {
    /// `"stdout"` or `"stderr"`, the `stream` field of the events.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Reads `stream` as lines until its end (or an error), calling `on_line`
/// with each: at most [`MAX_LINE`] bytes at a time (a longer line comes in
/// pieces, nothing lost), decoded as lossy UTF-8, without its trailing
/// `\n` or `\r`. A last line without a newline counts too.
///
/// # Cancel safety
///
/// Not cancel safe: a line read in part is lost with the future.
pub(crate) async fn read_lines(stream: impl AsyncRead + Unpin, mut on_line: impl FnMut(String)) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        on_line(String::from_utf8_lossy(&buf).into_owned());
    }
}

/// Emits one captured line as a `tracing` event: INFO, target
/// [`CHILD_TARGET`], field `stream`, the line as its message, inside the
/// child's `child{process, pid}` span.
pub(crate) fn emit_line(process: &str, pid: u32, stream: Stream, line: &str) {
    let _label = child_span(tracing::Level::INFO, process, pid).entered();
    let stream = stream.as_str();
    tracing::info!(target: CHILD_TARGET, stream, "{line}");
}

/// What else the parent does with a child's lines, besides their events:
/// called with the child's pid, the stream and the line.
pub(crate) type LineHook = Arc<dyn Fn(u32, Stream, &str) + Send + Sync>;

/// How the lines of a child are handled beyond their `tracing` events.
#[derive(Default)]
pub(crate) struct OutputHook {
    /// Nothing is read before this resolves (or its sender is dropped):
    /// a supervisor opens it once it has told that the child started.
    pub(crate) gate: Option<oneshot::Receiver<()>>,
    /// Called with each line, after its event.
    pub(crate) on_line: Option<LineHook>,
}

impl std::fmt::Debug for OutputHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputHook")
            .field("gate", &self.gate.is_some())
            .field("on_line", &self.on_line.is_some())
            .finish()
    }
}

/// Reads the two streams of a child, `stdout` and `stderr`, each in its
/// order, once `gate` opens; `on_line` gets every line. Resolves when both
/// have ended.
///
/// # Cancel safety
///
/// Not cancel safe: what was read and not yet handled is lost.
pub(crate) async fn read_both(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    gate: Option<oneshot::Receiver<()>>,
    on_line: impl Fn(Stream, String),
) {
    if let Some(gate) = gate {
        // Sent or dropped: either way, reading may begin.
        let _ = gate.await;
    }
    let out = async {
        if let Some(s) = stdout {
            read_lines(s, |line| on_line(Stream::Stdout, line)).await;
        }
    };
    let err = async {
        if let Some(s) = stderr {
            read_lines(s, |line| on_line(Stream::Stderr, line)).await;
        }
    };
    tokio::join!(out, err);
}

/// Starts the task that reads a target child's captured streams from the
/// reading ends of their pipes, emitting each line (and handing it to the
/// hook). `finished` runs when both streams have ended, or the task was
/// dropped with its runtime.
pub(crate) fn spawn_capture(
    process: String,
    pid: u32,
    (out, err): (OwnedHandle, OwnedHandle),
    hook: OutputHook,
    finished: impl FnOnce() + Send + 'static,
) {
    struct Finished<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Finished<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    let finished = Finished(Some(finished));
    let readers = sys::pipe_reader(out).and_then(|o| Ok((o, sys::pipe_reader(err)?)));
    let (out, err) = match readers {
        Ok(readers) => readers,
        Err(e) => {
            tracing::warn!(pid, error = %e, "could not read a child's captured output");
            return;
        }
    };
    let OutputHook { gate, on_line } = hook;
    tokio::spawn(async move {
        let _finished = finished;
        read_both(Some(out), Some(err), gate, |stream, line| {
            emit_line(&process, pid, stream, &line);
            if let Some(hook) = &on_line {
                hook(pid, stream, &line);
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn collect(reads: &[&[u8]]) -> Vec<String> {
        let mut mock = tokio_test::io::Builder::new();
        for r in reads {
            mock.read(r);
        }
        let mut got = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_lines(mock.build(), |l| got.push(l)));
        got
    }

    #[test]
    fn lines_are_cut_at_newlines_across_partial_reads() {
        let got = collect(&[b"one\ntw", b"o\r\n", b"\nthr", b"ee"]);
        assert_eq!(got, ["one", "two", "", "three"]);
    }

    #[test]
    fn a_long_line_comes_in_pieces_and_bad_utf8_is_replaced() {
        let long = vec![b'a'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\n\xffok\n");
        let got = collect(&[&input]);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1].len(), MAX_LINE);
        assert_eq!(got[2].len(), 10);
        assert_eq!(got[3], "\u{fffd}ok");
    }

    #[test]
    fn nothing_is_read_before_the_gate_opens() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (open, gate) = oneshot::channel();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            let out = tokio_test::io::Builder::new().read(b"out\n").build();
            let err = tokio_test::io::Builder::new().read(b"err\n").build();
            let task = tokio::spawn(read_both(
                Some(out),
                Some(err),
                Some(gate),
                move |stream, line| s.lock().unwrap().push((stream, line)),
            ));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(seen.lock().unwrap().is_empty(), "held back by the gate");
            drop(open);
            task.await.unwrap();
            let mut seen = seen.lock().unwrap().clone();
            seen.sort_by_key(|(s, _)| s.as_str());
            assert_eq!(
                seen,
                [
                    (Stream::Stderr, "err".to_owned()),
                    (Stream::Stdout, "out".to_owned())
                ]
            );
        });
    }
}
