//! A block of shared memory that a Rust process and a Python process share
//! by name: Rust creates it (named as Python names them, `psm_...`) and
//! writes numbers into it; a Python program attaches with
//! `multiprocessing.shared_memory.SharedMemory(name=...)`, reads them
//! through a `memoryview` and writes their sum into the same block; Rust
//! reads the answer and unlinks the block. Skips with a message when
//! `python3` is not installed.
//!
//! ```text
//! cargo run --example shared_memory_python
//! ```

use std::process::Command;

use tokio_multiprocessing as mp;

/// Reads the count and the little-endian `u32`s at 8.., writes their sum
/// as a `u64` at 0. It unregisters the block from its resource tracker,
/// which would otherwise unlink it when Python exits (Python 3.8 to 3.12
/// track blocks they attach to, not only those they create).
const PYTHON: &str = r#"
import struct, sys
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(name=sys.argv[1])
resource_tracker.unregister(shm._name, "shared_memory")
(n,) = struct.unpack_from("<I", shm.buf, 4)
numbers = struct.unpack_from(f"<{n}I", shm.buf, 8)
struct.pack_into("<Q", shm.buf, 0, sum(numbers))
print(f"python read {n} numbers from {shm.name} ({shm.size} bytes)")
shm.close()
"#;

fn main() -> std::io::Result<()> {
    let numbers: Vec<u32> = (1..=100).collect();
    let shm = mp::SharedMemory::create_unique(8 + 4 * numbers.len())?;
    let name = shm.name().expect("a named block").to_owned();
    let count = u32::try_from(numbers.len()).expect("100 numbers");
    shm.write_at(4, &count.to_le_bytes());
    let bytes: Vec<u8> = numbers.iter().flat_map(|n| n.to_le_bytes()).collect();
    shm.write_at(8, &bytes);

    let run = Command::new("python3")
        .arg("-c")
        .arg(PYTHON)
        .arg(&name)
        .status();
    let answered = match run {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: python3 is not installed");
            false
        }
        Err(e) => {
            shm.unlink()?;
            return Err(e);
        }
        Ok(status) if !status.success() => {
            shm.unlink()?;
            return Err(std::io::Error::other(format!("python3 failed: {status}")));
        }
        Ok(_) => true,
    };
    if answered {
        let mut sum = [0u8; 8];
        shm.read_at(0, &mut sum);
        println!(
            "rust read the sum python wrote: {}",
            u64::from_le_bytes(sum)
        );
    }
    // The creator unlinks the name; dropping `shm` unmaps the block.
    shm.unlink()
}
