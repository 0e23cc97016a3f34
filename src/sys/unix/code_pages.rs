//! Giving back the page-table entries of an idle process's code.
//!
//! A process's resident size counts every page of a file it has mapped and
//! touched, its program's code among them, although the machine holds
//! each such page once, in the page cache, for every process that maps it.
//! A pool worker touches most of a Rust program's code as it decodes,
//! runs and answers tasks (the kernel also maps up to 16 neighbouring
//! pages on each fault), so an idle worker shows megabytes of code it is
//! not running. Dropping those entries shrinks its resident size to what
//! it owns; the pages stay cached, and the code's next run maps them
//! again with minor faults.

use std::io;
use std::os::fd::OwnedFd;

/// One mapping that may be dropped: a private mapping of a file, never
/// writable, with no page of its own (`Anonymous: 0 kB`), so its pages are
/// exactly the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// Drops this process's page-table entries of its unmodified, read-only
/// file mappings (the program's code and constants, the shared libraries'),
/// and returns how many bytes of them were resident. With `then_wait_on`,
/// it then blocks the thread until that socket has something to read (or
/// is closed), in the same call: the kernel maps 16 pages around each
/// page of code that runs after the release, so the less runs before the
/// thread sleeps, the less comes back.
///
/// # Errors
///
/// Reading `/proc/self/smaps` failed (nothing was released, and there
/// was no wait); `madvise` failing on one mapping skips it.
pub(crate) fn release_code_pages(then_wait_on: Option<&OwnedFd>) -> io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mapped = droppable(&smaps);
    drop(smaps);
    let mut released = 0;
    for &(mapping, resident) in &mapped {
        // SAFETY: the range is a whole mapping of this process, private,
        // never writable, and without a page of its own (`droppable`
        // checked its permissions and `Anonymous: 0 kB`): every page in it
        // is the file's page, which `MADV_DONTNEED` leaves in the page
        // cache; the next access maps the same bytes again. Nothing in
        // this process holds a reference into it that the call could
        // invalidate: the bytes do not change.
        let rc = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.len,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released += resident;
        }
    }
    if let Some(fd) = then_wait_on {
        // Readable, closed or in error: whatever it is, the caller's
        // `recv` sees it.
        let _ = super::stream::wait(fd, super::stream::Wait::Readable, None);
    }
    Ok(released)
}

/// The mappings of `smaps` that `release_code_pages` may drop, each with
/// its resident bytes (only those with some).
fn droppable(smaps: &str) -> Vec<(Droppable, u64)> {
    let mut out = Vec::new();
    // The mapping being read, and what its fields said so far.
    let mut current: Option<(Droppable, Option<u64>, Option<u64>)> = None;
    let mut finish = |m: Option<(Droppable, Option<u64>, Option<u64>)>| {
        if let Some((d, Some(rss), Some(0))) = m
            && rss > 0
        {
            out.push((d, rss * 1024));
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take());
            current = header.map(|d| (d, None, None));
            continue;
        }
        let Some((_, rss, anon)) = current.as_mut() else {
            continue;
        };
        let mut field = line.split_whitespace();
        let (Some(name), Some(kib)) = (field.next(), field.next().and_then(|v| v.parse().ok()))
        else {
            continue;
        };
        match name {
            "Rss:" => *rss = Some(kib),
            "Anonymous:" => *anon = Some(kib),
            _ => {}
        }
    }
    finish(current.take());
    out
}

/// A mapping's first line in `smaps` (`start-end perms offset dev inode
/// path`): `None` if `line` is a field line, `Some(None)` for a mapping
/// that may not be dropped.
fn mapping_header(line: &str) -> Option<Option<Droppable>> {
    let mut parts = line.split_whitespace();
    let range = parts.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = parts.next()?;
    let (_offset, _dev, inode) = (parts.next()?, parts.next()?, parts.next()?);
    let path = parts.next().unwrap_or("");
    let perms = perms.as_bytes();
    let droppable = perms.len() == 4
        && perms[0] == b'r'
        && perms[1] == b'-'
        && perms[3] == b'p'
        && inode != "0"
        && path.starts_with('/')
        && end > start;
    Some(droppable.then_some(Droppable {
        start,
        len: end - start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 1234 /usr/bin/prog
Rss:                 400 kB
Anonymous:             0 kB
55d0a0100000-55d0a0500000 r-xp 00100000 fe:00 1234 /usr/bin/prog
Size:               4096 kB
Rss:                3000 kB
Anonymous:             0 kB
55d0a0500000-55d0a0540000 r--p 00500000 fe:00 1234 /usr/bin/prog
Rss:                 140 kB
Anonymous:           136 kB
55d0a0540000-55d0a0542000 rw-p 00540000 fe:00 1234 /usr/bin/prog
Rss:                   8 kB
Anonymous:             8 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 100 kB
Anonymous:           100 kB
7f0000000000-7f0000010000 rw-s 00000000 00:01 77 /memfd:page (deleted)
Rss:                  64 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00028000 fe:00 99 /usr/lib/libc.so.6
Rss:                 700 kB
Anonymous:             0 kB
7f0000300000-7f0000301000 r-xp 00000000 fe:00 98 /usr/lib/unused.so
Rss:                   0 kB
Anonymous:             0 kB
7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unmodified_read_only_file_mappings_with_resident_pages_are_dropped() {
        let got: Vec<(usize, u64)> = droppable(SMAPS)
            .into_iter()
            .map(|(d, rss)| (d.start, rss / 1024))
            .collect();
        assert_eq!(
            got,
            [
                (0x55d0_a000_0000, 400),
                (0x55d0_a010_0000, 3000),
                (0x7f00_0010_0000, 700),
            ],
            "the relocated constants (pages of their own), the writable data, \
             the heap, a shared mapping, an untouched library and the vdso stay"
        );
        let text = droppable(SMAPS)[1].0;
        assert_eq!(text.len, 0x40_0000);
    }

    #[test]
    fn released_code_runs_again() {
        fn busy(n: u64) -> u64 {
            (0..n).fold(0u64, |a, x| a.wrapping_mul(31).wrapping_add(x))
        }
        let before = busy(1000);
        let released = release_code_pages(None).expect("smaps readable");
        assert!(released > 0, "this test's own code was resident");
        // The code and the constants are read again from the page cache.
        assert_eq!(busy(1000), before);
        assert_eq!(format!("{:?}", Some(3)), "Some(3)");
    }
}
