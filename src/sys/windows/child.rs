//! A started child process: `CreateProcess`, its exit, and the Job Object
//! that ends it with us.

use std::ffi::CString;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle};
use std::os::windows::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE, WAIT_OBJECT_0,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, GetCurrentProcess, GetExitCodeProcess, TerminateProcess,
    WaitForSingleObject,
};

use super::pipe_io::EventSignal;
use super::{Group, OwnedHandle, Signal, TERMINATE_CODE, open_child};

/// A child process we started.
///
/// Until the child has exited, the parent keeps its copy of the child's
/// end of the control channel: the child takes it from us by its value
/// (see `claim_control_socket`), so it must stay open here until the
/// child could have. It closes when the exit is seen, so that the parent
/// then reads the end of the stream.
#[derive(Debug)]
pub(crate) struct Child {
    pid: u32,
    process: StdHandle,
    control: Mutex<Option<OwnedHandle>>,
}

impl Child {
    /// Starts our own executable with `argv` and the environment `env`
    /// (entries `KEY=VALUE`), in the console group `group` says, and puts
    /// it in our Job Object. `control` is the child's end of its control
    /// channel, named in `env` by its value here; it is kept until the
    /// child has exited. `stdio`, if given, becomes the child's standard
    /// output and error.
    pub(crate) fn spawn(
        control: OwnedHandle,
        argv: &[CString],
        env: &[CString],
        group: Group,
        stdio: Option<(OwnedHandle, OwnedHandle)>,
    ) -> io::Result<Child> {
        let exe = std::env::current_exe()?;
        let mut command = std::process::Command::new(exe);
        command.args(
            argv.iter()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned()),
        );
        command.env_clear();
        for entry in env {
            let entry = entry.to_string_lossy();
            // A name may start with '=' on Windows (the drive's directories).
            if let Some(at) = entry.get(1..).and_then(|rest| rest.find('=')) {
                command.env(&entry[..=at], &entry[at + 2..]);
            }
        }
        if group != Group::Inherit {
            command.creation_flags(CREATE_NEW_PROCESS_GROUP);
        }
        if let Some((out, err)) = stdio {
            // The standard library hands the child inheritable copies.
            command.stdout(out.into_std()).stderr(err.into_std());
        }
        let started = command.spawn()?;
        let pid = started.id();
        let raw = open_child(pid);
        // The standard library's handle on the process closes with
        // `started`; ours is a second one.
        let process = if raw.is_null() {
            let e = io::Error::last_os_error();
            // Without a handle we cannot watch it: end it.
            let mut started = started;
            let _ = started.kill();
            return Err(e);
        } else {
            // SAFETY: a handle we just opened and own alone.
            unsafe { StdHandle::from_raw_handle(raw) }
        };
        drop(started);
        super::job::place(&process, pid, group);
        Ok(Child {
            pid,
            process,
            control: Mutex::new(Some(control)),
        })
    }

    /// Puts a copy of `handle` in the child's own table and returns its
    /// value there, for the child's orders: the copy is the child's from
    /// now on and closes when it exits, whether or not it took it.
    pub(crate) fn give_handle(&self, handle: &OwnedHandle) -> io::Result<u64> {
        let mut theirs: HANDLE = std::ptr::null_mut();
        // SAFETY: our own pseudo-handle, `handle` open for the call, and
        // the child's process handle, opened with PROCESS_DUP_HANDLE;
        // `theirs` receives a value in the child's table, never used here.
        let ok = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                handle.as_raw(),
                self.process.as_raw_handle(),
                &mut theirs,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(theirs as usize as u64)
    }

    /// Takes charge of process `pid` (only the fork server's children are
    /// adopted, and Windows has no fork server: kept for the contract).
    pub(crate) fn adopt(pid: u32) -> Child {
        let raw = open_child(pid);
        assert!(
            !raw.is_null(),
            "adopting process {pid}, which cannot be opened"
        );
        Child {
            pid,
            // SAFETY: a handle we just opened (checked non-null) and own alone.
            process: unsafe { StdHandle::from_raw_handle(raw) },
            control: Mutex::new(None),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits up to `ms` milliseconds (`u32::MAX`: for ever) for the exit;
    /// says whether it came. Once it has, our copy of the child's end of
    /// the channel closes, so that its reader sees the end of the stream
    /// after the last byte the child wrote.
    fn wait_ms(&self, ms: u32) -> bool {
        // SAFETY: the process handle is open while `self` lives.
        let exited =
            unsafe { WaitForSingleObject(self.process.as_raw_handle(), ms) == WAIT_OBJECT_0 };
        if exited {
            drop(
                self.control
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
        exited
    }

    /// The child's exit status, if it has exited. Windows keeps the status
    /// as long as a handle is open, so this may be asked again.
    pub(crate) fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        if !self.wait_ms(0) {
            return Ok(None);
        }
        let mut code = 0u32;
        // SAFETY: the handle is open; `code` is a valid place for the code.
        if unsafe { GetExitCodeProcess(self.process.as_raw_handle(), &mut code) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(ExitStatus::from_raw(code)))
    }

    /// Resolves once the child has exited (it is not reaped).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes (the system thread pool waits on the
    /// process handle, and a dropped wait is withdrawn).
    pub(crate) async fn exited(&self) -> io::Result<()> {
        if self.wait_ms(0) {
            return Ok(());
        }
        // SAFETY: the process handle is open while `self` lives, and the
        // future borrows `self` for as long as the wait does.
        let ended = unsafe { EventSignal::for_handle(self.process.as_raw_handle()) }?;
        ended.await;
        // Exited: this closes our copy of its end of the channel.
        self.wait_ms(0);
        Ok(())
    }

    /// Blocks until the child has exited (it is not reaped), reading and
    /// discarding whatever arrives on `drain` meanwhile, so that a child
    /// blocked writing to us can finish.
    pub(crate) fn wait_exited_blocking(&self, drain: Option<&OwnedHandle>) {
        loop {
            if self.wait_ms(50) {
                return;
            }
            if let Some(io) = drain.and_then(|d| d.io().ok()) {
                let mut scratch = bytes::BytesMut::new();
                while let Ok(n) = io.recv_into(&mut scratch, 64 * 1024, false) {
                    if n == 0 {
                        break;
                    }
                    scratch.clear();
                }
            }
        }
    }

    /// Blocks until the child has exited or `timeout` has passed; says
    /// whether it exited.
    pub(crate) fn wait_exited_timeout_blocking(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX - 1);
            match self.wait_ms(ms) {
                true => return true,
                false if Instant::now() >= deadline => return false,
                false => {}
            }
        }
    }

    /// Ends the child (both requests do: Windows has no signals). Its exit
    /// code is the one Python gives a terminated child.
    pub(crate) fn signal(&self, _sig: Signal) -> io::Result<()> {
        // SAFETY: the process handle is open while `self` lives.
        if unsafe { TerminateProcess(self.process.as_raw_handle(), TERMINATE_CODE) } == 0 {
            let e = io::Error::last_os_error();
            // An exited process refuses with access denied.
            if !self.wait_ms(0) {
                return Err(e);
            }
        }
        Ok(())
    }
}
