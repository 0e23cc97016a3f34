//! `Value` and `Array` across processes: increments by several children
//! sum exactly, a holder killed with `SIGKILL` poisons the value for the
//! next locker, children fill an `Array<f64>` the parent reads, and both
//! travel inside any argument.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn add_sync((v, times): (mp::Value<u64>, u32)) {
    for _ in 0..times {
        let mut g = v.blocking_lock().expect("not poisoned");
        // Read, yield, write: without exclusion, increments would be lost.
        let n = *g;
        std::thread::yield_now();
        *g = n + 1;
    }
}

async fn add_async((v, times): (mp::Value<u64>, u32)) {
    for _ in 0..times {
        let mut g = v.lock().await.expect("not poisoned");
        let n = *g;
        tokio::task::yield_now().await;
        *g = n + 1;
    }
}

async fn increments_by_four_children_sum_exactly() -> Result<(), Failed> {
    let v = mp::Value::new(0u64)?;
    let mut ps = Vec::new();
    for i in 0..4 {
        let args = (v.clone(), 2500u32);
        let p = if i % 2 == 0 {
            mp::Process::new(add_sync, args)
        } else {
            mp::Process::new(add_async, args)
        };
        p.start().await?;
        ps.push(p);
    }
    for _ in 0..500 {
        *v.lock().await.expect("not poisoned") += 1;
    }
    for p in ps {
        p.join().await?;
    }
    let total = v.get().await;
    ensure(total == 10_500, format!("the sum is {total}, not 10500"))?;
    ensure(!v.is_poisoned(), "not poisoned")
}

/// Takes the value's lock, writes half of an update, and never lets go.
fn hold_half_written((v, held): (mp::Value<[u32; 2]>, mp::Event)) {
    let mut g = v.blocking_lock().expect("not poisoned");
    g[0] = 1;
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

async fn a_holder_killed_with_sigkill_poisons_the_value() -> Result<(), Failed> {
    let v = mp::Value::new([0u32; 2])?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_half_written, (v.clone(), held.clone()));
    holder.start().await?;
    ensure(
        held.wait_timeout(Duration::from_secs(10)).await,
        "the holder took the lock",
    )?;
    let blocked = matches!(v.try_lock(), Err(std::sync::TryLockError::WouldBlock));
    ensure(blocked, "try_lock would block while the holder lives")?;
    let killed_at = Instant::now();
    holder.kill()?;
    let r = tokio::time::timeout(Duration::from_secs(5), v.lock()).await?;
    let recovered = killed_at.elapsed();
    let mut g = match r {
        Ok(_) => return Err("the next locker got the value unpoisoned".into()),
        Err(p) => p.into_inner(),
    };
    ensure(*g == [1, 0], format!("the half-written value is {:?}", *g))?;
    ensure(
        recovered < Duration::from_secs(3),
        format!("taken over {recovered:?} after the kill"),
    )?;
    g[1] = 1;
    drop(g);
    ensure(v.is_poisoned(), "poisoned for every process")?;
    ensure(
        v.lock().await.is_err(),
        "still poisoned for the next locker",
    )?;
    v.clear_poison();
    ensure(
        *v.lock().await.expect("cleared") == [1, 1],
        "the repair stayed",
    )?;
    ensure(v.get().await == [1, 1], "get")
}

fn fill_part((xs, part, parts): (mp::Array<f64>, usize, usize)) {
    let mut g = xs.blocking_lock().expect("not poisoned");
    let per = g.len() / parts;
    for (i, x) in g[part * per..(part + 1) * per].iter_mut().enumerate() {
        *x = (part * per + i) as f64 * 0.25;
    }
}

async fn children_fill_an_array_of_f64_the_parent_reads() -> Result<(), Failed> {
    let xs = mp::Array::<f64>::new(400)?;
    let mut ps = Vec::new();
    for part in 0..4 {
        let p = mp::Process::new(fill_part, (xs.clone(), part, 4usize));
        p.start().await?;
        ps.push(p);
    }
    for p in ps {
        p.join().await?;
    }
    let got = xs.to_vec().await;
    let want: Vec<f64> = (0..400).map(|i| f64::from(i) * 0.25).collect();
    ensure(got == want, "every element as the children wrote it")?;
    ensure(xs.blocking_to_vec() == want, "blocking_to_vec")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Shared {
    label: String,
    counts: mp::Array<i32>,
    total: Vec<mp::Value<i64>>,
}

/// Sums the array into the first value and returns the label.
async fn sum_into(shared: Shared) -> String {
    let sum: i64 = shared
        .counts
        .to_vec()
        .await
        .iter()
        .map(|&c| i64::from(c))
        .sum();
    shared.total[0].set(sum).await;
    shared.label
}

async fn handles_travel_inside_any_argument() -> Result<(), Failed> {
    let counts = mp::Array::from_slice(&[1, 2, 3, 4])?;
    let total = mp::Value::new(0i64)?;
    let p = mp::Process::new(
        sum_into,
        Shared {
            label: "sum".to_owned(),
            counts: counts.clone(),
            total: vec![total.clone()],
        },
    );
    p.start().await?;
    ensure(p.join().await? == "sum", "the label")?;
    ensure(total.get().await == 10, "the child's sum")
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "increments_by_four_children_sum_exactly",
            T,
            increments_by_four_children_sum_exactly,
        ),
        case(
            "a_holder_killed_with_sigkill_poisons_the_value",
            T,
            a_holder_killed_with_sigkill_poisons_the_value,
        ),
        case(
            "children_fill_an_array_of_f64_the_parent_reads",
            T,
            children_fill_an_array_of_f64_the_parent_reads,
        ),
        case(
            "handles_travel_inside_any_argument",
            T,
            handles_travel_inside_any_argument,
        ),
    ]
}
