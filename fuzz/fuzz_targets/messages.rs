//! Every message decoder fed an arbitrary frame body.
//!
//! ```text
//! cargo fuzz run messages fuzz/corpus/messages fuzz/seeds/messages -s none -- -max_total_time=600
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tokio_multiprocessing::fuzz::messages(data);
});
