//! The frame decoder fed arbitrary bytes in arbitrary chunks.
//!
//! ```text
//! cargo fuzz run frames fuzz/corpus/frames fuzz/seeds/frames -s none -- -max_total_time=600
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tokio_multiprocessing::fuzz::frames(data);
});
