//! A child that writes over its queue's shared memory: the parent gets a
//! typed error for that queue, promptly, never a panic, and everything
//! else keeps working.
//!
//! The child finds the queue's `memfd` among its own descriptors (its link
//! in `/proc/self/fd` reads `/memfd:tokio-mp-queue (deleted)`), maps it and
//! writes into it, as a buggy or hostile program could.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

/// Where the ring starts in a queue's segment (`RING` in
/// `src/queue/mod.rs`), and where its cursors are (`HEAD`, `TAIL`).
const RING: usize = 128;
const HEAD: usize = 32;

/// The claimed record length of the scenario: nearly 2 GiB.
const HUGE: u32 = 0x7fff_fff0;

/// The descriptor of this process's only queue segment.
fn queue_memfd() -> Result<OwnedFd, String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue; // the directory's own descriptor, gone already
        };
        if link.to_string_lossy() == "/memfd:tokio-mp-queue (deleted)" {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [path] => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| format!("{}: {e}", path.display())),
        _ => Err(format!("{} queue segments: {found:?}", found.len())),
    }
}

/// Maps the whole segment behind `fd` and hands its bytes to `f`.
fn with_mapping(fd: &OwnedFd, f: impl FnOnce(&mut [u8])) -> Result<(), String> {
    let size = nix::sys::stat::fstat(fd.as_fd())
        .map_err(|e| e.to_string())?
        .st_size;
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    let nz = NonZeroUsize::new(len).ok_or("an empty segment")?;
    // SAFETY: a fresh shared mapping at an address the kernel picks; it
    // replaces nothing of ours and is unmapped below, after the last use
    // of the slice made from it.
    let ptr = unsafe {
        mmap(
            None,
            nz,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd.as_fd(),
            0,
        )
    }
    .map_err(|e| e.to_string())?;
    // SAFETY: `len` bytes from `ptr` are mapped read-write until the
    // `munmap` below; this test binary is the only thing that touches them
    // in this process (the queue's own mapping is elsewhere), and the
    // parent races us only in the sense a hostile peer would.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len) };
    f(bytes);
    // SAFETY: `ptr` and `len` are the mapping made above, unmapped once;
    // `bytes` is not used after this.
    unsafe { munmap(ptr, len) }.map_err(|e| e.to_string())
}

/// In the child: puts one item, then claims its record is `HUGE` bytes.
fn corrupt_first_record(q: mp::Queue<u32>) -> Result<(), String> {
    q.blocking_put(7).map_err(|e| e.to_string())?;
    let fd = queue_memfd()?;
    with_mapping(&fd, |bytes| {
        bytes[RING..RING + 4].copy_from_slice(&HUGE.to_le_bytes());
    })
}

/// In the child: puts one item, then moves `head` past `tail`.
fn scramble_cursors(q: mp::Queue<u32>) -> Result<(), String> {
    q.blocking_put(7).map_err(|e| e.to_string())?;
    let fd = queue_memfd()?;
    with_mapping(&fd, |bytes| {
        bytes[HEAD..HEAD + 8].copy_from_slice(&(1u64 << 40).to_ne_bytes());
    })
}

/// In the child: tries to shrink the segment to nothing, which would kill
/// the parent with `SIGBUS` at its next access. Returns the error.
fn shrink_segment(q: mp::Queue<u32>) -> Result<String, String> {
    q.blocking_put(7).map_err(|e| e.to_string())?;
    let fd = queue_memfd()?;
    match nix::unistd::ftruncate(&fd, 0) {
        Ok(()) => Err("the segment was shrunk".to_owned()),
        Err(e) => Ok(e.to_string()),
    }
}

fn echo(x: u32) -> u32 {
    x
}

/// The parent still starts children, and its other queues still work.
async fn still_usable(other: &mp::Queue<u32>) -> Result<(), Failed> {
    other.put(41).await?;
    ensure(other.get().await? == 41, "another queue lost its item")?;
    let p = mp::Process::new(echo, 5u32);
    p.start().await?;
    ensure(p.join().await? == 5, "a new child")?;
    Ok(())
}

async fn a_record_length_written_by_a_child_is_a_typed_error() -> Result<(), Failed> {
    let q: mp::Queue<u32> = mp::Queue::new()?;
    let other: mp::Queue<u32> = mp::Queue::new()?;
    let p = mp::Process::new(corrupt_first_record, q.clone());
    p.start().await?;
    p.join().await??;
    ensure(q.len() == 1, format!("len {}", q.len()))?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let got = q.get_timeout(Duration::from_secs(5)).await;
        let took = t0.elapsed();
        match got {
            Err(mp::GetError::Corrupt(msg)) => {
                ensure(msg.contains("2147483632 bytes"), &msg)?;
                println!("get: {took:?}: {msg}");
            }
            other => return Err(format!("expected Corrupt, got {other:?}").into()),
        }
        ensure(took < Duration::from_secs(1), format!("took {took:?}"))?;
        ensure(
            matches!(q.try_get(), Err(mp::GetError::Corrupt(_))),
            "try_get",
        )?;
    }
    still_usable(&other).await
}

async fn cursors_scrambled_by_a_child_fail_puts_and_gets() -> Result<(), Failed> {
    let q: mp::Queue<u32> = mp::Queue::new()?;
    let other: mp::Queue<u32> = mp::Queue::new()?;
    let p = mp::Process::new(scramble_cursors, q.clone());
    p.start().await?;
    p.join().await??;
    match q.put(9).await {
        Err(e @ mp::PutError::Corrupt(..)) => {
            println!("put: {e}");
            ensure(e.into_inner() == 9, "the item comes back")?;
        }
        other => return Err(format!("expected Corrupt, got {other:?}").into()),
    }
    ensure(
        matches!(q.get().await, Err(mp::GetError::Corrupt(_))),
        "get",
    )?;
    still_usable(&other).await
}

async fn a_child_cannot_shrink_a_queue_segment() -> Result<(), Failed> {
    let q: mp::Queue<u32> = mp::Queue::new()?;
    let p = mp::Process::new(shrink_segment, q.clone());
    p.start().await?;
    let refused = p.join().await??;
    println!("ftruncate: {refused}");
    ensure(q.get().await? == 7, "the item")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_record_length_written_by_a_child_is_a_typed_error",
            T,
            a_record_length_written_by_a_child_is_a_typed_error,
        ),
        case(
            "cursors_scrambled_by_a_child_fail_puts_and_gets",
            T,
            cursors_scrambled_by_a_child_fail_puts_and_gets,
        ),
        case(
            "a_child_cannot_shrink_a_queue_segment",
            T,
            a_child_cannot_shrink_a_queue_segment,
        ),
    ]
}
