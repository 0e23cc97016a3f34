//! The benchmark driver (`bench/unix.rs`): runs one case `reps` times and
//! prints one JSON line with the median time per operation.
//!
//! ```text
//! cargo run --release --example bench -- spawn [--n 200] [--reps 5]
//! cargo run --release --example bench -- list
//! ```
//!
//! It measures Linux, next to Python's `multiprocessing` on the same
//! machine (`bench/compare.py`). On Windows it says so and exits: the
//! Windows build is tested under Wine, whose timings say nothing about
//! Windows (see `docs/windows.md`).

#[cfg(unix)]
#[path = "bench/unix.rs"]
mod unix;

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(windows)]
fn main() {
    eprintln!(
        "bench measures Linux; timings of the Windows build under Wine say nothing \
         about Windows (docs/windows.md)"
    );
    std::process::exit(2);
}
