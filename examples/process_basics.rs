//! Two of the first Process examples: "hello bob", then `run_proc` with the
//! parent's and the child's pids.
//!
//! ```text
//! cargo run --example process_basics
//! ```

use tokio_multiprocessing as mp;

fn f(name: String) {
    println!("hello {name}");
}

fn run_proc(name: String) {
    println!("Run child process {name} ({})...", std::process::id());
}

#[mp::main]
async fn main() -> mp::Result<()> {
    // Process(target=f, args=('bob',)); p.start(); p.join()
    let p = mp::Process::new(f, "bob".to_owned());
    p.start().await?;
    p.join().await?;

    println!("Parent process {}.", std::process::id());
    let p = mp::Process::new(run_proc, "test".to_owned());
    println!("Child process will start.");
    p.start().await?;
    p.join().await?;
    println!("Child process end.");
    Ok(())
}
