//! How the `server` and `service_tree` examples learn that they are to
//! stop: [`Stop`].

/// The requests to stop a service: `SIGTERM` and `SIGINT` on Unix,
/// Ctrl-C and the console's close on Windows.
#[cfg(unix)]
pub(crate) struct Stop(tokio::signal::unix::Signal, tokio::signal::unix::Signal);

#[cfg(unix)]
impl Stop {
    pub(crate) fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop(
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    }

    /// The name of the first request that comes.
    pub(crate) async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.0.recv() => "SIGTERM",
            _ = self.1.recv() => "SIGINT",
        }
    }
}

/// The requests to stop a service: `SIGTERM` and `SIGINT` on Unix,
/// Ctrl-C and the console's close on Windows.
#[cfg(windows)]
pub(crate) struct Stop(
    tokio::signal::windows::CtrlC,
    tokio::signal::windows::CtrlClose,
);

#[cfg(windows)]
impl Stop {
    pub(crate) fn listen() -> std::io::Result<Stop> {
        Ok(Stop(
            tokio::signal::windows::ctrl_c()?,
            tokio::signal::windows::ctrl_close()?,
        ))
    }

    /// The name of the first request that comes.
    pub(crate) async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.0.recv() => "Ctrl-C",
            _ = self.1.recv() => "close",
        }
    }
}
