//! A child's environment and working directory
//! (`ProcessBuilder::env`, `env_remove`, `current_dir`, and the same on
//! `PoolBuilder`), under both start methods: a child of the fork server,
//! whose server's environment is fixed, applies them itself. On Windows,
//! which has no fork server, under `Spawn` only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

/// What a child sees: the values of `keys`, and its working directory.
fn look(keys: Vec<String>) -> (Vec<Option<String>>, PathBuf) {
    let values = keys.iter().map(|k| std::env::var(k).ok()).collect();
    (
        values,
        std::env::current_dir().expect("a working directory"),
    )
}

/// A fresh directory of this test, canonical (as `getcwd` gives it; on
/// Windows absolute, as the temporary directory is, since `canonicalize`
/// there gives a `\\?\` path that `GetCurrentDirectory` never does).
fn fresh_dir() -> Result<PathBuf, Failed> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tmp-setting-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    if cfg!(windows) {
        Ok(std::path::absolute(dir)?)
    } else {
        Ok(dir.canonicalize()?)
    }
}

/// A child sees the variables set for it, not the one removed, and runs
/// in the directory given.
async fn a_child_runs_in_its_setting(method: mp::StartMethod) -> Result<(), Failed> {
    ensure(
        std::env::var_os("PATH").is_some(),
        "this test needs PATH in the parent",
    )?;
    let dir = fresh_dir()?;
    let p = mp::Process::builder()
        .start_method(method)
        .env("TMP_SETTING_A", "alpha")
        .env("TMP_SETTING_B", "first")
        .env("TMP_SETTING_B", "second")
        .env_remove("PATH")
        .env("TMP_SETTING_GONE", "x")
        .env_remove("TMP_SETTING_GONE")
        .current_dir(&dir)
        .build(
            look,
            ["TMP_SETTING_A", "TMP_SETTING_B", "PATH", "TMP_SETTING_GONE"]
                .map(String::from)
                .to_vec(),
        );
    p.start().await?;
    let (values, cwd) = p.join().await?;
    let _ = std::fs::remove_dir(&dir);
    ensure(
        values
            == [
                Some("alpha".to_owned()),
                Some("second".to_owned()),
                None,
                None,
            ],
        format!("{method:?}: the child saw {values:?}"),
    )?;
    ensure(
        cwd == dir,
        format!("{method:?}: the child ran in {cwd:?}, not {dir:?}"),
    )?;
    // This process is untouched.
    ensure(
        std::env::var_os("TMP_SETTING_A").is_none() && std::env::var_os("PATH").is_some(),
        "the parent's environment changed",
    )
}

/// Without settings, the child has the parent's environment and directory.
async fn a_child_keeps_the_parents_setting(method: mp::StartMethod) -> Result<(), Failed> {
    let p = mp::Process::builder()
        .start_method(method)
        .build(look, vec!["PATH".to_owned()]);
    p.start().await?;
    let (values, cwd) = p.join().await?;
    ensure(
        values == [std::env::var("PATH").ok()] && cwd == std::env::current_dir()?,
        format!("{method:?}: the child saw {values:?} in {cwd:?}"),
    )
}

/// A directory that does not exist fails `start` with an error that
/// names it and says why; nothing is spawned.
async fn a_missing_dir_is_a_clear_error(method: mp::StartMethod) -> Result<(), Failed> {
    let dir = fresh_dir()?.join("not-there");
    let p = mp::Process::builder()
        .start_method(method)
        .current_dir(&dir)
        .build(look, vec![]);
    let err = p.start().await.expect_err("no such directory");
    let said = err.to_string();
    // The system's own words for a missing path: Windows' (and Wine's,
    // which differ) are left to the error's kind.
    let says_missing = if cfg!(windows) {
        matches!(&err, mp::ProcessError::CurrentDir { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    } else {
        said.contains("No such file")
    };
    ensure(
        matches!(&err, mp::ProcessError::CurrentDir { dir: d, .. } if *d == dir)
            && said.contains(&dir.display().to_string())
            && says_missing,
        format!("{method:?}: {err:?}: {said}"),
    )?;
    ensure(p.pid().is_none(), "nothing was started")?;
    // A file is not a directory either.
    let file = fresh_dir()?.join("a-file");
    std::fs::write(&file, b"")?;
    let p = mp::Process::builder()
        .start_method(method)
        .current_dir(&file)
        .build(look, vec![]);
    let said = p.start().await.expect_err("a file").to_string();
    ensure(
        said.contains("not a directory") && said.contains("a-file"),
        said,
    )
}

/// A name no environment can hold is refused before anything starts.
async fn a_bad_name_is_refused() -> Result<(), Failed> {
    let p = mp::Process::builder().env("A=B", "x").build(look, vec![]);
    let err = p.start().await.expect_err("a name with '='");
    ensure(
        matches!(err, mp::ProcessError::InvalidEnv(_)) && err.to_string().contains("A=B"),
        format!("{err:?}"),
    )
}

fn worker_look(key: String) -> (Option<String>, PathBuf) {
    let (mut values, cwd) = look(vec![key]);
    (values.pop().flatten(), cwd)
}

/// A pool's workers get the setting too.
async fn pool_workers_run_in_their_setting() -> Result<(), Failed> {
    let dir = fresh_dir()?;
    let pool = mp::Pool::builder()
        .processes(2)
        .env("TMP_SETTING_POOL", "pooled")
        .current_dir(&dir)
        .build()
        .await?;
    let seen = pool
        .apply(worker_look, "TMP_SETTING_POOL".to_owned())
        .await?;
    pool.close();
    pool.join().await?;
    let _ = std::fs::remove_dir(&dir);
    ensure(
        seen == (Some("pooled".to_owned()), dir.clone()),
        format!("a worker saw {seen:?}"),
    )?;
    // A missing directory fails the build, saying which.
    let missing = dir.join("not-there");
    let err = mp::Pool::builder()
        .processes(1)
        .current_dir(&missing)
        .build()
        .await
        .expect_err("no such directory");
    ensure(
        err.to_string().contains(&missing.display().to_string()),
        err.to_string(),
    )
}

// On Windows the loop below is over `Spawn` alone.
#[cfg_attr(windows, allow(clippy::single_element_loop))]
pub(crate) fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (tag, method) in [
        // Unix only: Windows has no fork server.
        #[cfg(unix)]
        ("fork_server", mp::StartMethod::ForkServer),
        ("spawn", mp::StartMethod::Spawn),
    ] {
        cases.push(case(
            &format!("a_child_runs_in_its_setting_{tag}"),
            T,
            move || a_child_runs_in_its_setting(method),
        ));
        cases.push(case(
            &format!("a_child_keeps_the_parents_setting_{tag}"),
            T,
            move || a_child_keeps_the_parents_setting(method),
        ));
        cases.push(case(
            &format!("a_missing_dir_is_a_clear_error_{tag}"),
            T,
            move || a_missing_dir_is_a_clear_error(method),
        ));
    }
    cases.push(case("a_bad_name_is_refused", T, a_bad_name_is_refused));
    cases.push(case(
        "pool_workers_run_in_their_setting",
        T,
        pool_workers_run_in_their_setting,
    ));
    cases
}
