//! A pool that takes workers from other machines: it listens with an
//! authkey, and copies of this program join it with `mp::worker_main`.
//!
//! ```text
//! cargo run --example remote_pool                    # the pool, and two workers it starts itself
//! cargo run --example remote_pool -- --work ADDRESS  # a worker, wherever it runs
//! ```
//!
//! Without arguments, the program is the pool: it listens on
//! `127.0.0.1:0`, starts two workers as copies of itself (a scheduler such
//! as Kubernetes or Slurm would place them on other machines; see
//! `docs/cluster.md`), waits until they have joined, and maps a function
//! over 40 numbers on its one local worker and the two remote ones.
//! Every worker must be the same build, and know the key
//! (`MP_POOL_AUTHKEY`, here a fixed demo key when unset).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_multiprocessing as mp;

const DEMO_KEY: &str = "demo key: set MP_POOL_AUTHKEY";

fn key() -> Vec<u8> {
    std::env::var("MP_POOL_AUTHKEY")
        .unwrap_or_else(|_| DEMO_KEY.to_owned())
        .into_bytes()
}

/// Cubes `x`, a little slowly, and says which process did it.
fn cube(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(10));
    (x * x * x, std::process::id())
}

#[mp::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, address] = args.as_slice() {
        if flag == "--work" {
            mp::worker_main(address.as_str(), &key()).await?;
            return Ok(());
        }
    }
    let pool = mp::Pool::builder()
        .processes(1)
        .listen("127.0.0.1:0", &key())
        .build()
        .await?;
    let address = pool.listen_address().ok_or("the pool does not listen")?;
    println!("pool listening at {address}");
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(
            tokio::process::Command::new(std::env::current_exe()?)
                .arg("--work")
                .arg(address.to_string())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    while pool.stats().remote_workers < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{} remote workers joined", pool.stats().remote_workers);
    let results = pool.map_chunked(cube, 1..=40u64, 1).await?;
    let cubes: Vec<u64> = results.iter().map(|(c, _)| *c).collect();
    println!("sum of cubes 1..=40: {}", cubes.iter().sum::<u64>());
    let mut by_process: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, pid) in &results {
        *by_process.entry(*pid).or_default() += 1;
    }
    for (pid, tasks) in &by_process {
        let whose = if workers.iter().any(|w| w.id() == Some(*pid)) {
            "remote"
        } else {
            "local"
        };
        println!("{whose} worker {pid}: {tasks} tasks");
    }
    // The workers' service ends with the pool: they exit by themselves.
    pool.close();
    pool.join().await?;
    for mut w in workers {
        let status = w.wait().await?;
        println!("a remote worker exited: {status}");
    }
    Ok(())
}
