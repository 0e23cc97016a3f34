//! The benchmark driver (`bench/driver.rs`): runs one case `reps` times and
//! prints one JSON line with the median time per operation.
//!
//! ```text
//! cargo run --release --example bench -- spawn [--n 200] [--reps 5]
//! cargo run --release --example bench -- list
//! ```
//!
//! It measures Linux, next to Python's `multiprocessing` on the same
//! machine (`bench/compare.py`). The Windows build runs it too, without
//! the cases that measure Linux itself; under Wine its figures say
//! nothing about Windows (see `docs/windows.md`).

#[path = "bench/driver.rs"]
mod driver;

fn main() {
    driver::main();
}
