//! A function called directly, then in a child, then in five children at
//! once, all printing through one shared `Lock` so that lines never
//! interleave.
//!
//! ```text
//! cargo run --example whoami
//! ```
//!
//! Python prints the module name (`__main__` everywhere); the process name
//! says more here: `MainProcess`, `Process-1`, ...

use tokio_multiprocessing as mp;

fn whoami((label, lock): (String, mp::Lock)) {
    let me = mp::current_process();
    let _held = lock.blocking_lock();
    println!("{label}: name:{}, pid:{}", me.name(), me.pid());
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let lock = mp::Lock::new()?;
    whoami(("function call".to_owned(), lock.clone()));

    let p = mp::Process::new(whoami, ("spawned child".to_owned(), lock.clone()));
    p.start().await?;
    p.join().await?;

    for i in 0..5 {
        // Not joined here: the guard joins them when main returns, as
        // Python joins non-daemonic children at exit.
        mp::Process::new(whoami, (format!("run process {i}"), lock.clone()))
            .start()
            .await?;
    }
    let _held = lock.lock().await;
    println!("Main process exit.");
    Ok(())
}
