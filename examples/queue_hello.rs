//! A child puts a list on a `Queue`; the parent takes it and prints it.
//!
//! ```text
//! cargo run --example queue_hello
//! ```
//!
//! Prints `[42, None, 'hello']`, as the Python original does.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

/// The Python values of the original list.
#[derive(Debug, Serialize, Deserialize)]
enum Value {
    Int(i64),
    None,
    Str(String),
}

/// Python's `repr`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::None => f.write_str("None"),
            Value::Str(s) => write!(f, "'{s}'"),
        }
    }
}

async fn f(q: mp::Queue<Vec<Value>>) {
    q.put(vec![
        Value::Int(42),
        Value::None,
        Value::Str("hello".into()),
    ])
    .await
    .expect("put");
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let q = mp::Queue::new()?;
    let p = mp::Process::new(f, q.clone());
    p.start().await?;
    let list = q.get().await.expect("get");
    let shown: Vec<String> = list.iter().map(Value::to_string).collect();
    println!("[{}]", shown.join(", "));
    p.join().await?;
    Ok(())
}
