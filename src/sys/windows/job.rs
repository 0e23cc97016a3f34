//! Job Objects: the one every child of ours joins, so that it ends with
//! us; and one per child started in a group of its own, which stands for
//! its process group (Windows has none that can be signalled or looked
//! into): ending the group ends the job, and the group lives while the
//! job has a live process.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle, RawHandle};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, IsProcessInJob, JOB_OBJECT_LIMIT_BREAKAWAY_OK,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectBasicAccountingInformation,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject,
};

use super::{Group, TERMINATE_CODE};

/// A new job whose processes end when its last handle closes.
fn new_job() -> io::Result<StdHandle> {
    // SAFETY: null attributes and name ask for an unnamed job with
    // default security; a failure returns null.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just made and own alone.
    let job = unsafe { StdHandle::from_raw_handle(job) };
    // SAFETY: the structure is plain data, valid when zeroed.
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags =
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_BREAKAWAY_OK;
    let size = u32::try_from(std::mem::size_of_val(&limits)).expect("a small structure");
    // SAFETY: `limits` is the structure the class names, and `size` its
    // exact size; the job handle is open.
    let ok = unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&raw const limits).cast(),
            size,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(job)
}

/// The job every child of ours joins (`None` if it could not be made).
fn shared() -> Option<RawHandle> {
    static JOB: OnceLock<Option<StdHandle>> = OnceLock::new();
    JOB.get_or_init(|| match new_job() {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::warn!(error = %e, "no Job Object: children will not end with this process");
            None
        }
    })
    .as_ref()
    .map(AsRawHandle::as_raw_handle)
}

/// The jobs of the children started in a group of their own, by pid.
static GROUPS: Mutex<Vec<(u32, Arc<StdHandle>)>> = Mutex::new(Vec::new());

fn group_job(pid: u32) -> Option<Arc<StdHandle>> {
    GROUPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, job)| job.clone())
}

/// Puts the child `process` (pid `pid`) in a job as `group` says: its
/// own for a group of its own, the shared one for ours (either ends it
/// when this process ends), none for a session of its own (a detached
/// child, which outlives us).
pub(super) fn place(process: &StdHandle, pid: u32, group: Group) {
    if group == Group::Session {
        return;
    }
    let own_group = group == Group::Own;
    let assign = |job: RawHandle| {
        // SAFETY: both handles are open for the call.
        if unsafe { AssignProcessToJobObject(job, process.as_raw_handle()) } == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if own_group {
        match new_job().and_then(|job| assign(job.as_raw_handle()).map(|()| job)) {
            Ok(job) => {
                GROUPS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((pid, Arc::new(job)));
                return;
            }
            Err(e) => tracing::debug!(error = %e, pid, "no job of its own for a child"),
        }
    }
    if let Some(job) = shared()
        && let Err(e) = assign(job)
    {
        tracing::debug!(error = %e, pid, "a child could not join the Job Object");
    }
}

/// Ends every process of the group child `pid` leads (its job): Windows
/// has no signal to ask them first.
pub(crate) fn end_group(pid: u32) -> io::Result<()> {
    let Some(job) = group_job(pid) else {
        // No job of its own (it could not be made): the leader alone.
        return super::signal_pid(pid, super::Signal::Kill);
    };
    // SAFETY: the job handle is open while `job` lives.
    if unsafe { TerminateJobObject(job.as_raw_handle(), TERMINATE_CODE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many processes of the group child `pid` leads are alive, if it
/// leads one.
pub(crate) fn group_size(pid: u32) -> Option<u32> {
    let job = group_job(pid)?;
    // SAFETY: plain data, valid when zeroed.
    let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
    let size = u32::try_from(std::mem::size_of_val(&info)).expect("a small structure");
    // SAFETY: the job handle is open; `info` is the structure the class
    // names, writable for `size` bytes.
    let ok = unsafe {
        QueryInformationJobObject(
            job.as_raw_handle(),
            JobObjectBasicAccountingInformation,
            (&raw mut info).cast(),
            size,
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(info.ActiveProcesses)
}

/// The leader of the group whose job process `pid` is in, if any.
pub(crate) fn leader_of(pid: u32) -> Option<u32> {
    let raw = super::open_child(pid);
    if raw.is_null() {
        return None;
    }
    // SAFETY: a handle we just opened (checked non-null) and own alone.
    let process = unsafe { StdHandle::from_raw_handle(raw) };
    let groups = GROUPS.lock().unwrap_or_else(PoisonError::into_inner);
    groups.iter().find_map(|(leader, job)| {
        let mut inside = 0;
        // SAFETY: both handles are open for the call; `inside` is a valid
        // place for the answer.
        let ok =
            unsafe { IsProcessInJob(process.as_raw_handle(), job.as_raw_handle(), &mut inside) };
        (ok != 0 && inside != 0).then_some(*leader)
    })
}

/// Forgets the job of the group child `pid` led, once it is empty.
pub(crate) fn forget_empty_group(pid: u32) {
    if group_size(pid) == Some(0) {
        GROUPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(p, _)| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::time::{Duration, Instant};

    use super::super::{Child, Group, socketpair};
    use super::*;

    /// Run by [`a_group_is_its_job_and_ends_with_it`] in a child: sleeps.
    #[test]
    #[ignore = "a helper the job test runs in a child"]
    fn sleeper() {
        std::thread::sleep(Duration::from_secs(60));
    }

    /// This test binary, running [`sleeper`] alone, as `Child::spawn`
    /// starts it.
    fn sleeping_child(group: Group) -> Child {
        let (_ours, theirs) = socketpair().expect("a pipe pair");
        let argv: Vec<CString> = [
            "test",
            "--exact",
            "sys::windows::job::tests::sleeper",
            "--ignored",
        ]
        .iter()
        .map(|a| CString::new(*a).expect("no NUL"))
        .collect();
        let env: Vec<CString> = std::env::vars()
            .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
            .collect();
        Child::spawn(theirs, &argv, &env, group, None).expect("spawn")
    }

    #[test]
    fn a_group_is_its_job_and_ends_with_it() {
        let child = sleeping_child(Group::Own);
        let pid = child.pid();
        assert_eq!(group_size(pid), Some(1), "the child is alone in its job");
        assert!(super::super::group_exists(pid));
        end_group(pid).expect("the job ends");
        assert!(child.wait_exited_timeout_blocking(Duration::from_secs(20)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::super::group_exists(pid) {
            assert!(Instant::now() < deadline, "the job still has a process");
            std::thread::sleep(Duration::from_millis(10));
        }
        forget_empty_group(pid);
        assert_eq!(group_size(pid), None, "an empty group's job is let go");
        let status = child.try_reap().expect("reaped").expect("exited");
        assert_eq!(super::super::python_exitcode(status), -15);
    }

    #[test]
    fn a_child_in_our_group_has_no_job_of_its_own() {
        let child = sleeping_child(Group::Inherit);
        assert_eq!(group_size(child.pid()), None);
        child.signal(super::super::Signal::Kill).expect("ended");
        assert!(child.wait_exited_timeout_blocking(Duration::from_secs(20)));
    }
}
