//! The records of a worker's shared page: a job as the job ring carries
//! it, and a reply as the reply ring carries it, in a fixed little-endian
//! layout.
//!
//! Both sides are builds of one program (the handshake checks it), so the
//! layout needs no names or versions; what it must do is cost little (a
//! `map` with chunks of one puts a record each way per task) and refuse a
//! broken record with an error, never a panic, since a worker that
//! scribbles over its page must not bring its parent down.
//!
//! ```text
//! job:    id u64 | kind u8 | offset i64 | count u32 | count x end u32 | arguments
//! reply:  id u64 | count u32 | failures u32 | count x end u32 | values | failures
//! ```
//!
//! `end` `i` is where item `i` ends in the bytes that follow the ends (item
//! `i` starts where item `i - 1` ended); the ends never decrease, and the
//! last one is the length of those bytes. A reply's `failures` is the
//! length of the failures that come after the values: the rare
//! `(index, Outcome)` list, in MessagePack. An empty record in the job ring
//! is a marker (a job that comes over the socket), never a job.

use bytes::Bytes;

use crate::wire::message::{Outcome, TargetKind, TargetRef};

/// Where each item ends: inline for up to two items (an `apply`'s one
/// argument, a value, a chunk of one or two), allocated for more.
pub(crate) type Ends = smallvec::SmallVec<[u64; 2]>;

/// Items (a job's arguments, a reply's values) as a record holds them:
/// item `i` is `bytes[ends[i - 1]..ends[i]]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Items<'a> {
    pub(crate) ends: &'a [u64],
    pub(crate) bytes: &'a [u8],
}

impl Items<'_> {
    /// The bytes a record spends on these items.
    fn record_len(&self) -> usize {
        4 * self.ends.len() + self.bytes.len()
    }
}

/// The bytes of a job record before its ends.
const JOB_HEAD: usize = 8 + 1 + 8 + 4;

/// The bytes of a reply record before its ends.
const REPLY_HEAD: usize = 8 + 4 + 4;

/// The length of the job record of a job whose arguments are `args`.
pub(crate) fn job_len(args: Items<'_>) -> usize {
    JOB_HEAD + args.record_len()
}

/// The length of the reply record of `values`, but for its failures.
pub(crate) fn reply_len(values: Items<'_>) -> usize {
    REPLY_HEAD + values.record_len()
}

/// Appends the record of job `id`, which runs `target` on every argument
/// of `args`. `Err` if an argument lies beyond what a record can say (4 GiB;
/// the ring takes far less, and the caller checks the length first).
pub(crate) fn put_job(
    buf: &mut Vec<u8>,
    id: u64,
    target: TargetRef,
    args: Items<'_>,
) -> Result<(), String> {
    buf.reserve(job_len(args));
    buf.extend_from_slice(&id.to_le_bytes());
    buf.push(match target.kind {
        TargetKind::Sync => 0,
        TargetKind::Async => 1,
    });
    buf.extend_from_slice(&target.offset.to_le_bytes());
    put_items(buf, args)
}

/// Reads a job record: its id, target, and its arguments' ends and bytes.
pub(crate) fn read_job(record: &[u8]) -> Result<(u64, TargetRef, Ends, Bytes), String> {
    let mut r = Reader::new(record);
    let id = r.u64()?;
    let kind = match r.u8()? {
        0 => TargetKind::Sync,
        1 => TargetKind::Async,
        other => return Err(format!("a job record names target kind {other}")),
    };
    let offset = i64::from_le_bytes(r.array()?);
    let count = r.u32()?;
    let ends = r.ends(count)?;
    let args = r.items(&ends, r.left())?;
    Ok((id, TargetRef { kind, offset }, ends, args))
}

/// Appends the record of the reply to job `id`: its values, and the
/// failures among them (each with its index).
pub(crate) fn put_reply(
    buf: &mut Vec<u8>,
    id: u64,
    values: Items<'_>,
    failures: &[(u64, Outcome)],
) -> Result<(), String> {
    buf.reserve(reply_len(values));
    buf.extend_from_slice(&id.to_le_bytes());
    let failures = if failures.is_empty() {
        Vec::new()
    } else {
        rmp_serde::to_vec(failures).map_err(|e| e.to_string())?
    };
    buf.extend_from_slice(&count(values.ends.len())?.to_le_bytes());
    buf.extend_from_slice(&count(failures.len())?.to_le_bytes());
    put_items_after_count(buf, values)?;
    buf.extend_from_slice(&failures);
    Ok(())
}

/// What a reply record holds: the job's id, the values' ends and bytes,
/// and the failures among them.
pub(crate) type Reply = (u64, Ends, Bytes, Vec<(u64, Outcome)>);

/// Reads a reply record.
pub(crate) fn read_reply(record: &[u8]) -> Result<Reply, String> {
    let mut r = Reader::new(record);
    let id = r.u64()?;
    let count = r.u32()?;
    let failures_len = r.u32()? as usize;
    let ends = r.ends(count)?;
    let values_len = r
        .left()
        .checked_sub(failures_len)
        .ok_or("a reply record's failures run past its end")?;
    let values = r.items(&ends, values_len)?;
    let failures: Vec<(u64, Outcome)> = if failures_len == 0 {
        Vec::new()
    } else {
        crate::target::decode_value(r.take(failures_len)?)?
    };
    if failures_len > 0 && failures.is_empty() {
        // Never written so: no failures are no bytes.
        return Err("a reply record holds an empty list of failures".to_owned());
    }
    Ok((id, ends, values, failures))
}

/// `n` as a record's count or length.
fn count(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} is too many for a ring record"))
}

/// Appends the items' count, ends and bytes.
fn put_items(buf: &mut Vec<u8>, items: Items<'_>) -> Result<(), String> {
    buf.extend_from_slice(&count(items.ends.len())?.to_le_bytes());
    put_items_after_count(buf, items)
}

/// Appends the items' ends and bytes.
fn put_items_after_count(buf: &mut Vec<u8>, items: Items<'_>) -> Result<(), String> {
    for end in items.ends {
        let end = u32::try_from(*end).map_err(|_| format!("an item ends at {end}"))?;
        buf.extend_from_slice(&end.to_le_bytes());
    }
    buf.extend_from_slice(items.bytes);
    Ok(())
}

/// Reads a record from the front, each read checked against its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(record: &'a [u8]) -> Reader<'a> {
        Reader { rest: record }
    }

    /// How many bytes are left.
    fn left(&self) -> usize {
        self.rest.len()
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "a ring record ends {} bytes short",
                n - self.rest.len()
            ));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// `count` ends, checked to never decrease.
    fn ends(&mut self, count: u32) -> Result<Ends, String> {
        let n = count as usize;
        let bytes = self.take(n.checked_mul(4).ok_or("a ring record's count overflows")?)?;
        let mut ends = Ends::with_capacity(n);
        let mut last = 0u32;
        for chunk in bytes.chunks_exact(4) {
            let end = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if end < last {
                return Err(format!("a ring record's item ends at {end}, before {last}"));
            }
            last = end;
            ends.push(u64::from(end));
        }
        Ok(ends)
    }

    /// The next `len` bytes: the items cut at `ends`, which must end
    /// exactly there.
    fn items(&mut self, ends: &[u64], len: usize) -> Result<Bytes, String> {
        let last = ends.last().copied().unwrap_or(0);
        if last != len as u64 {
            return Err(format!(
                "a ring record's items end at {last}, but {len} bytes follow"
            ));
        }
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

/// Reads `bytes` as a job record and as a reply record, as a slot or a
/// worker would find them in its ring: a value or an error, never a
/// panic; a job that reads back is written again byte for byte (the
/// layout has one spelling), and so is a reply without failures.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz(bytes: &[u8]) {
    if let Ok((id, target, ends, args)) = read_job(bytes) {
        let mut again = Vec::new();
        put_job(
            &mut again,
            id,
            target,
            Items {
                ends: &ends,
                bytes: &args,
            },
        )
        .expect("a job read back writes");
        assert_eq!(again, bytes, "a job record has one spelling");
    }
    if let Ok((id, ends, values, failures)) = read_reply(bytes) {
        let mut again = Vec::new();
        put_reply(
            &mut again,
            id,
            Items {
                ends: &ends,
                bytes: &values,
            },
            &failures,
        )
        .expect("a reply read back writes");
        if failures.is_empty() {
            assert_eq!(again, bytes, "a reply record has one spelling");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetRef {
        TargetRef {
            kind: TargetKind::Async,
            offset: -123_456_789,
        }
    }

    /// Items made of `values`, encoded: their ends and their bytes.
    fn items(values: &[&str]) -> (Vec<u64>, Vec<u8>) {
        let (mut ends, mut bytes) = (Vec::new(), Vec::new());
        for v in values {
            bytes.extend(rmp_serde::to_vec(v).unwrap());
            ends.push(bytes.len() as u64);
        }
        (ends, bytes)
    }

    fn job(values: &[&str]) -> Vec<u8> {
        let (ends, bytes) = items(values);
        let mut buf = Vec::new();
        put_job(
            &mut buf,
            1,
            target(),
            Items {
                ends: &ends,
                bytes: &bytes,
            },
        )
        .unwrap();
        buf
    }

    fn reply(values: &[&str], failures: &[(u64, Outcome)]) -> Vec<u8> {
        let (ends, bytes) = items(values);
        let mut buf = Vec::new();
        put_reply(
            &mut buf,
            2,
            Items {
                ends: &ends,
                bytes: &bytes,
            },
            failures,
        )
        .unwrap();
        buf
    }

    #[test]
    fn a_job_reads_back_as_written() {
        for values in [&[][..], &["one"], &["", "two", "", "three three"]] {
            let (ends, bytes) = items(values);
            let args = Items {
                ends: &ends,
                bytes: &bytes,
            };
            let mut buf = vec![0xAA];
            put_job(&mut buf, 42, target(), args).unwrap();
            assert_eq!(buf.len(), 1 + job_len(args));
            let (id, t, back_ends, back) = read_job(&buf[1..]).unwrap();
            assert_eq!((id, t), (42, target()));
            assert_eq!((back_ends.to_vec(), back.to_vec()), (ends, bytes));
        }
    }

    #[test]
    fn a_reply_reads_back_as_written_with_its_failures() {
        let (ends, bytes) = items(&["a", "", "ccc"]);
        let failures = [(1, Outcome::DecodeArgs("bad".into()))];
        let record = reply(&["a", "", "ccc"], &failures);
        let (id, back_ends, back, back_failures) = read_reply(&record).unwrap();
        assert_eq!((id, back_ends.to_vec(), back.to_vec()), (2, ends, bytes));
        assert!(
            matches!(&back_failures[..], [(1, Outcome::DecodeArgs(e))] if e == "bad"),
            "{back_failures:?}"
        );
        let (_, _, _, none) = read_reply(&reply(&["a"], &[])).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn every_cut_of_a_record_is_an_error_not_a_panic() {
        let job = job(&["x", "yy"]);
        for cut in 0..job.len() {
            assert!(read_job(&job[..cut]).is_err(), "job cut at {cut}");
        }
        let reply = reply(&["z"], &[(0, Outcome::EncodeResult("e".into()))]);
        for cut in 0..reply.len() {
            assert!(read_reply(&reply[..cut]).is_err(), "reply cut at {cut}");
        }
    }

    /// Records with bytes changed at random read back as errors, or as
    /// records that write again byte for byte (see [`fuzz`]).
    #[test]
    // Random numbers cut down to an index below a length, or to a byte.
    #[allow(clippy::cast_possible_truncation)]
    fn changed_records_read_as_errors_or_as_themselves() {
        let seeds = [
            job(&[]),
            job(&["x", "yy", ""]),
            reply(&["z", "w"], &[]),
            reply(&["z", ""], &[(1, Outcome::EncodeResult("e".into()))]),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            for _ in 0..5_000 {
                let mut bytes = seed.clone();
                for _ in 0..=next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = next() as u8;
                }
                if next() % 4 == 0 {
                    bytes.truncate((next() % bytes.len() as u64) as usize);
                }
                fuzz(&bytes);
            }
        }
    }

    #[test]
    fn broken_records_are_errors_not_panics() {
        let job = job(&["x", "yy"]);
        // A target kind that does not exist.
        let mut bad = job.clone();
        bad[8] = 9;
        assert!(read_job(&bad).unwrap_err().contains("target kind"));
        // Ends that go backwards.
        let mut bad = job.clone();
        bad[JOB_HEAD..JOB_HEAD + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(read_job(&bad).is_err());
        // A count past the end, and one that would overflow.
        for n in [3u32, u32::MAX] {
            let mut bad = job.clone();
            bad[17..21].copy_from_slice(&n.to_le_bytes());
            assert!(read_job(&bad).is_err(), "count {n}");
        }
        // Bytes left over after the last item.
        let mut bad = job.clone();
        bad.push(0);
        assert!(read_job(&bad).is_err());
        // A reply whose failures run past its end, or are not MessagePack.
        let reply = reply(&["z"], &[]);
        let mut bad = reply.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_reply(&bad).is_err());
        let mut bad = reply.clone();
        bad[12..16].copy_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(&[0xc1, 0xc1]);
        assert!(read_reply(&bad).is_err());
        // An empty list of failures, which no writer spells out.
        let mut bad = reply.clone();
        bad[12..16].copy_from_slice(&1u32.to_le_bytes());
        bad.push(0x90);
        assert!(read_reply(&bad).unwrap_err().contains("empty list"));
    }
}
