//! `SharedMemory` with Python's `multiprocessing.shared_memory` (each side
//! creating the block in turn, the other attaching by name), and blocks
//! handed to children as handles.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

/// A fresh name for a block.
fn fresh_name(what: &str) -> String {
    format!("tmp_{what}_{}_{:08x}", std::process::id(), rand32())
}

fn rand32() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ NEXT.fetch_add(1 << 30, Ordering::Relaxed)
}

fn python_missing() -> bool {
    let found = std::process::Command::new("python3")
        .arg("-c")
        .arg("import multiprocessing.shared_memory")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: python3 (with multiprocessing.shared_memory) is not installed");
    }
    !found
}

/// Python creates the block, writes a question with `memoryview`, says
/// "ready", waits for a line on stdin, reads the answer from the block,
/// prints it and unlinks the block.
const PYTHON_CREATES: &str = r#"
import sys
from multiprocessing import shared_memory
shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=5000)
q = b"what is six times seven?"
shm.buf[16:16 + len(q)] = q
shm.buf[0] = len(q)
print("ready", shm.size, flush=True)
sys.stdin.readline()
n = shm.buf[2048]
print("answer", bytes(shm.buf[2049:2049 + n]).decode(), flush=True)
shm.close()
shm.unlink()
"#;

async fn python_creates_rust_reads_and_answers_in_the_block() -> Result<(), Failed> {
    if python_missing() {
        return Ok(());
    }
    let name = fresh_name("py");
    let mut py = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CREATES)
        .arg(&name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = py.stdin.take().expect("piped");
    let mut lines = BufReader::new(py.stdout.take().expect("piped")).lines();
    let ready = lines.next_line().await?.unwrap_or_default();
    ensure(ready == "ready 5000", format!("python said {ready:?}"))?;

    let shm = mp::SharedMemory::open(&name)?;
    ensure(shm.size() == 5000, format!("size {}", shm.size()))?;
    ensure(shm.name() == Some(name.as_str()), "the name, without '/'")?;
    let n = shm.atomic_bytes()[0].load(Ordering::Relaxed) as usize;
    let mut question = vec![0u8; n];
    shm.read_at(16, &mut question);
    ensure(
        question == b"what is six times seven?",
        format!("read {:?}", String::from_utf8_lossy(&question)),
    )?;
    let answer = b"forty-two";
    shm.write_at(2049, answer);
    shm.write_at(2048, &[u8::try_from(answer.len())?]);
    stdin.write_all(b"done\n").await?;
    stdin.flush().await?;

    let said = lines.next_line().await?.unwrap_or_default();
    ensure(said == "answer forty-two", format!("python said {said:?}"))?;
    ensure(py.wait().await?.success(), "python exited cleanly")?;
    let gone = mp::SharedMemory::open(&name).map(drop).unwrap_err();
    ensure(
        gone.kind() == std::io::ErrorKind::NotFound,
        format!("python unlinked it: {gone}"),
    )
}

/// Python attaches to the block by name (and tells its resource tracker
/// to leave it), checks the size, reads the question and writes the
/// answer.
const PYTHON_ATTACHES: &str = r#"
import sys
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(name=sys.argv[1])
resource_tracker.unregister(shm._name, "shared_memory")
n = shm.buf[0]
q = bytes(shm.buf[8:8 + n]).decode()
a = str(eval(q)).encode()
shm.buf[65:65 + len(a)] = a
shm.buf[64] = len(a)
print(shm.size, q, flush=True)
shm.close()
"#;

async fn rust_creates_python_reads_and_answers_in_the_block() -> Result<(), Failed> {
    if python_missing() {
        return Ok(());
    }
    // Not a multiple of the page: Python sees the object's size, 100.
    let shm = mp::SharedMemory::create_unique(100)?;
    let name = shm.name().expect("named").to_owned();
    ensure(name.starts_with("psm_"), &name)?;
    let q = b"6 * 7";
    shm.write_at(8, q);
    shm.write_at(0, &[u8::try_from(q.len())?]);
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_ATTACHES)
        .arg(&name)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success(), format!("python failed: {stderr}"))?;
    ensure(
        stdout.trim() == "100 6 * 7",
        format!("python said {stdout:?}"),
    )?;
    ensure(
        !stderr.contains("leaked"),
        format!("python's resource tracker: {stderr}"),
    )?;
    let n = shm.atomic_bytes()[64].load(Ordering::Relaxed) as usize;
    let mut answer = vec![0u8; n];
    shm.read_at(65, &mut answer);
    ensure(
        answer == b"42",
        format!("{:?}", String::from_utf8_lossy(&answer)),
    )?;
    // Python did not unlink it: the creator does.
    ensure(mp::SharedMemory::open(&name).is_ok(), "the name lives on")?;
    shm.unlink()?;
    ensure(mp::SharedMemory::open(&name).is_err(), "unlinked")
}

/// Writes its index into the blocks it is given, as a word and as bytes.
fn write_into((anon, named, i): (mp::SharedMemory, mp::SharedMemory, usize)) -> Option<String> {
    anon.atomic_u64(8 * i)
        .store(i as u64 + 100, Ordering::Relaxed);
    named.write_at(i, &[b"abcd"[i]]);
    named.name().map(str::to_owned)
}

async fn blocks_travel_to_children_as_handles() -> Result<(), Failed> {
    let anon = mp::SharedMemory::anonymous(64)?;
    let name = fresh_name("handle");
    let named = mp::SharedMemory::create(&name, 8)?;
    let mut ps = Vec::new();
    for i in 0..4 {
        let p = mp::Process::new(write_into, (anon.clone(), named.clone(), i));
        p.start().await?;
        ps.push(p);
    }
    for p in ps {
        let got = p.join().await?;
        ensure(got.as_deref() == Some(name.as_str()), "the name traveled")?;
    }
    for i in 0..4 {
        let w = anon.atomic_u64(8 * i).load(Ordering::Relaxed);
        ensure(w == i as u64 + 100, format!("word {i} is {w}"))?;
    }
    let mut bytes = [0u8; 4];
    named.read_at(0, &mut bytes);
    ensure(&bytes == b"abcd", format!("{bytes:?}"))?;
    named.unlink()?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "python_creates_rust_reads_and_answers_in_the_block",
            T,
            python_creates_rust_reads_and_answers_in_the_block,
        ),
        case(
            "rust_creates_python_reads_and_answers_in_the_block",
            T,
            rust_creates_python_reads_and_answers_in_the_block,
        ),
        case(
            "blocks_travel_to_children_as_handles",
            T,
            blocks_travel_to_children_as_handles,
        ),
    ]
}
