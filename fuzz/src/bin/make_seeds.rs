//! Writes valid frames of every message kind as seed corpora:
//! `fuzz/seeds/frames/` (whole frames, after a chunk-size byte) and
//! `fuzz/seeds/messages/` (frame bodies); and shared memory in sound
//! states as `fuzz/seeds/shm/`.
//!
//! ```text
//! RUSTFLAGS="--cfg fuzzing" cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds
//! ```

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let frames_dir = root.join("frames");
    let bodies_dir = root.join("messages");
    std::fs::create_dir_all(&frames_dir)?;
    std::fs::create_dir_all(&bodies_dir)?;
    for (i, frame) in tokio_multiprocessing::fuzz::seed_frames()
        .iter()
        .enumerate()
    {
        let mut with_cut = vec![(i * 7) as u8];
        with_cut.extend_from_slice(frame);
        std::fs::write(frames_dir.join(format!("seed-{i}")), with_cut)?;
        std::fs::write(bodies_dir.join(format!("seed-{i}")), &frame[4..])?;
    }
    let shm_dir = root.join("shm");
    std::fs::create_dir_all(&shm_dir)?;
    for (i, seed) in tokio_multiprocessing::fuzz::seed_shm().iter().enumerate() {
        std::fs::write(shm_dir.join(format!("seed-{i}")), seed)?;
    }
    println!("wrote seeds to {}", root.display());
    Ok(())
}
