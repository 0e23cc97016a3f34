//! The queue's unit tests: sizes, corruption, counts.

use std::sync::atomic::{AtomicU64, Ordering};

use super::core::*;
use super::*;

fn word(q: &Queue<u32>, at: usize) -> &AtomicU64 {
    q.core.local.word64(at)
}

#[test]
fn a_buffer_past_the_limit_is_invalid_input() {
    for buffer in [usize::MAX, usize::MAX - 100, MAX_BUFFER + 1] {
        let err = Queue::<u32>::with_buffer(0, buffer).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{buffer}");
        assert!(err.to_string().contains(&MAX_BUFFER.to_string()), "{err}");
        let err = JoinableQueue::<u32>::with_buffer(3, buffer).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{buffer}");
    }
}

#[test]
fn the_largest_buffer_is_made_and_used() {
    // Reserved, not committed: only the pages items touch are used.
    let q = Queue::<u32>::with_buffer(0, MAX_BUFFER).unwrap();
    assert_eq!(q.core.local.capacity(), MAX_BUFFER);
    q.try_put(7).unwrap();
    assert_eq!(q.try_get(), Ok(7));
}

#[test]
fn the_smallest_buffers_are_raised_and_still_work() {
    for buffer in [0, 1, 63, 65] {
        let q = Queue::<u32>::with_buffer(0, buffer).unwrap();
        q.try_put(7).unwrap();
        assert_eq!(q.try_get(), Ok(7), "{buffer}");
    }
}

#[test]
fn a_corrupt_record_is_an_error_for_that_queue_alone() {
    let q = Queue::<u32>::new().unwrap();
    let other = Queue::<u32>::new().unwrap();
    q.try_put(1).unwrap();
    // Another process claims the record is nearly 2 GiB long.
    // SAFETY: no other thread touches this queue's ring.
    unsafe {
        q.core
            .local
            .seg()
            .write_bytes(RING, &0x7fff_fff0u32.to_le_bytes())
    };
    for _ in 0..3 {
        assert!(matches!(q.try_get(), Err(GetError::Corrupt(_))));
        assert!(matches!(
            q.blocking_get_timeout(Duration::from_secs(5)),
            Err(GetError::Corrupt(_))
        ));
    }
    let err = q.try_get().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the queue's shared memory is corrupt: "),
        "{err}"
    );
    other.try_put(2).unwrap();
    assert_eq!(other.try_get(), Ok(2));
}

#[test]
fn cursors_out_of_order_fail_puts_and_gets_with_the_item_back() {
    let q = Queue::<u32>::new().unwrap();
    word(&q, HEAD).store(4096, Ordering::Relaxed);
    match q.try_put(5) {
        Err(e @ PutError::Corrupt(..)) => assert_eq!(e.into_inner(), 5),
        other => panic!("{other:?}"),
    }
    assert!(matches!(q.try_get(), Err(GetError::Corrupt(_))));
}

#[test]
fn len_never_wraps_and_never_passes_what_the_ring_holds() {
    let q = Queue::<u32>::with_buffer(0, 4096).unwrap();
    q.try_put(1).unwrap();
    word(&q, COUNT).store(0, Ordering::Relaxed);
    assert_eq!(q.try_get(), Ok(1));
    assert_eq!(q.len(), 0, "not 2^64 - 1");
    assert!(q.is_empty());
    word(&q, COUNT).store(u64::MAX, Ordering::Relaxed);
    assert!(q.len() <= 4096 / 8, "{}", q.len());
    // The next look under the lock sets it right.
    assert_eq!(q.try_get(), Err(GetError::Empty));
    assert_eq!(q.len(), 0);
}

#[test]
fn size_words_rewritten_by_another_process_change_nothing_here() {
    let q = Queue::<u32>::with_buffer(1, 4096).unwrap();
    word(&q, MAXSIZE).store(0, Ordering::Relaxed);
    word(&q, CAPACITY).store(u64::MAX, Ordering::Relaxed);
    q.try_put(1).unwrap();
    assert!(
        matches!(q.try_put(2), Err(PutError::Full(2))),
        "still bounded"
    );
    assert!(q.is_full());
    let big = Queue::<Vec<u8>>::with_buffer(0, 64).unwrap();
    big.core
        .local
        .word64(CAPACITY)
        .store(u64::MAX, Ordering::Relaxed);
    match big.try_put(vec![0; 100]) {
        Err(PutError::Encode(_, msg)) => assert!(msg.contains("buffer of 64 bytes"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_joinable_put_never_wraps_the_unfinished_count() {
    let q = JoinableQueue::<Vec<u8>>::with_buffer(0, 64).unwrap();
    q.try_put(vec![0; 40]).unwrap();
    q.core.local.word64(UNFINISHED).store(0, Ordering::Relaxed);
    // Too big for the room left: counted, then uncounted.
    assert!(matches!(q.try_put(vec![0; 40]), Err(PutError::Full(_))));
    assert_eq!(q.core.local.word64(UNFINISHED).load(Ordering::Relaxed), 0);
}
