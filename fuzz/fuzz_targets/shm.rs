//! The readers of shared memory fed what a hostile peer process could
//! have written there: a queue's ring and words, a pool page's reply ring
//! and gate word, and the synchronization primitives' words.
//!
//! ```text
//! cargo fuzz run shm fuzz/corpus/shm fuzz/seeds/shm -s none -- -max_total_time=600
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tokio_multiprocessing::fuzz::shm(data);
});
