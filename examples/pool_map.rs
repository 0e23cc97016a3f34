//! Squares three numbers on a pool of five workers.
//!
//! ```text
//! cargo run --example pool_map
//! ```
//!
//! Prints `[1, 4, 9]`, as the Python original does:
//!
//! ```python
//! with Pool(5) as p:
//!     print(p.map(f, [1, 2, 3]))
//! ```

use tokio_multiprocessing as mp;

fn f(x: u64) -> u64 {
    x * x
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let pool = mp::Pool::new(5).await?;
    println!("{:?}", pool.map(f, [1, 2, 3]).await?);
    pool.terminate().await; // what Python's `with` block does on exit
    Ok(())
}
