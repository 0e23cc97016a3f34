//! Queues between processes: basics, many producers and consumers, and
//! producers, consumers and raw writes that misbehave.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod chaos;
mod handles;
// Unix only: it maps a queue's segment by its descriptor and writes it raw.
#[cfg(unix)]
mod hostile;
mod processes;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    // The crate's own events, when a run is to be read closely.
    if std::env::var_os("MP_TEST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    // The longest first, so that the others fill the other thread.
    #[allow(unused_mut)]
    let mut modules = vec![
        common::module("chaos", chaos::cases()),
        common::module("handles", handles::cases()),
        common::module("processes", processes::cases()),
        common::module("basics", basics::cases()),
    ];
    #[cfg(unix)]
    modules.push(common::module("hostile", hostile::cases()));
    common::run(guard, modules)
}
