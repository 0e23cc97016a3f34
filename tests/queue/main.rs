//! Queues between processes: basics, many producers and consumers, and
//! producers, consumers and raw writes that misbehave.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod chaos;
mod handles;
mod hostile;
mod processes;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    // The longest first, so that the others fill the other thread.
    common::run(
        guard,
        [
            common::module("chaos", chaos::cases()),
            common::module("handles", handles::cases()),
            common::module("processes", processes::cases()),
            common::module("basics", basics::cases()),
            common::module("hostile", hostile::cases()),
        ],
    )
}
