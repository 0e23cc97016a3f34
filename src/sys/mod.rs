//! Operating-system specific code. Everything that makes a system call lives below here.

#[cfg(unix)]
pub(crate) mod unix;
#[cfg(unix)]
pub(crate) use unix::*;
