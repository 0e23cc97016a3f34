//! What a user sees when a program misuses the crate in a way the compiler
//! catches: a capturing closure as a target, `#[mp::main]` on the wrong
//! function. Each case is a small program in a scratch crate (under the
//! target directory) that depends on this one by path; `cargo check` (or
//! `cargo build`, for what only monomorphisation finds) must fail, at the
//! user's own line, with a message that says what is wrong.
//!
//! The checks look for this crate's own words and for the location, not
//! for rustc's whole text, which changes between compiler versions. Each
//! cargo run is bounded, so a hang fails instead of stalling the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long one cargo run may take: the first one checks every dependency
/// from cold on a slow machine.
const LIMIT: Duration = Duration::from_secs(20 * 60);

/// The scratch crate, written once.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-errors");
        std::fs::create_dir_all(dir.join("src/bin")).expect("scratch dir");
        let manifest = format!(
            "[package]\nname = \"compile-errors\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n[dependencies]\ntokio-multiprocessing = {{ path = {:?} }}\n\n\
             # Its own workspace, not the one of the crate under test.\n[workspace]\n",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(dir.join("Cargo.toml"), manifest).expect("manifest");
        // The versions this crate is tested with, already downloaded.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
            dir.join("Cargo.lock"),
        )
        .expect("lock file");
        dir
    })
}

/// Writes `source` as the program `name` and runs `cargo <verb>` on it;
/// returns whether it succeeded and what cargo printed.
fn cargo(verb: &str, name: &str, source: &str) -> (bool, String) {
    // One cargo at a time: they share the scratch target directory.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch();
    // The programs say `@main` for `main`, so that this file does not
    // look like a test with a `main` of its own.
    let source = source.replace("fn @main", "fn main");
    std::fs::write(dir.join("src/bin").join(format!("{name}.rs")), source).expect("source");
    let mut child = Command::new(env!("CARGO"))
        .args([verb, "--offline", "--quiet", "--color=never", "--bin", name])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo runs");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).expect("cargo's output");
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cargo waits") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo {verb} --bin {name} took over {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().expect("reader"))
}

/// The line of `source` that holds `marker`, 1-based, as rustc names it.
fn line_of(source: &str, marker: &str) -> usize {
    1 + source
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in source")
}

/// Asserts that `text` holds every one of `wanted`.
fn assert_says(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "expected {w:?} in:\n{text}");
    }
}

#[test]
fn a_closure_capturing_a_string_fails_check_at_its_line() {
    let source = r#"use tokio_multiprocessing as mp;

#[mp::main]
async fn @main() {
    let greeting = String::from("hi");
    let p = mp::Process::new(move |x: u32| format!("{greeting} {x}"), 1); // HERE
    p.start().await.unwrap();
}
"#;
    let (ok, text) = cargo("check", "captures_string", source);
    assert!(!ok, "a capturing closure passed cargo check:\n{text}");
    let at = format!("src/bin/captures_string.rs:{}:", line_of(source, "HERE"));
    assert_says(
        &text,
        &["a target cannot capture anything", "this captures", &at],
    );
    // Not rustc's leaf obligation, which never says "capture".
    assert!(!text.contains("`String: Copy`"), "{text}");
}

#[test]
fn a_capturing_closure_given_to_a_pool_fails_check_at_its_line() {
    let source = r#"use tokio_multiprocessing as mp;

#[mp::main]
async fn @main() {
    let pool = mp::Pool::new(1).await.unwrap();
    let names = vec![String::from("a")];
    let n: usize = pool.apply(move |i: usize| names.len() + i, 1).await.unwrap(); // HERE
    println!("{n}");
}
"#;
    let (ok, text) = cargo("check", "pool_captures", source);
    assert!(!ok, "a capturing closure passed cargo check:\n{text}");
    let at = format!("src/bin/pool_captures.rs:{}:", line_of(source, "HERE"));
    assert_says(&text, &["a target cannot capture anything", &at]);
}

#[test]
fn a_function_of_the_wrong_shape_is_not_called_capturing() {
    let source = r#"use tokio_multiprocessing as mp;

fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[mp::main]
async fn @main() {
    let p = mp::Process::new(add, (1, 2)); // HERE
    println!("{}", p.join().await.unwrap());
}
"#;
    let (ok, text) = cargo("check", "wrong_shape", source);
    assert!(!ok, "a two-argument fn passed cargo check:\n{text}");
    let at = format!("src/bin/wrong_shape.rs:{}:", line_of(source, "HERE"));
    assert_says(
        &text,
        &[
            "cannot be a target",
            "pass several arguments as one tuple",
            &at,
        ],
    );
    assert!(!text.contains("cannot capture"), "{text}");
}

#[test]
fn main_attr_on_a_plain_fn_says_where_it_goes() {
    let source = r#"use tokio_multiprocessing as mp;

#[mp::main] fn @main() {} // HERE
"#;
    let (ok, text) = cargo("check", "main_not_async", source);
    assert!(!ok, "#[mp::main] on a plain fn passed cargo check:\n{text}");
    let at = format!("src/bin/main_not_async.rs:{}:", line_of(source, "HERE"));
    assert_says(&text, &["goes on `async fn main`", &at]);
}

/// A closure capturing only `Copy` values is `Copy`, so only the build
/// (monomorphisation) sees that it captures: the error names the user's
/// line in its note.
#[test]
fn a_closure_capturing_a_number_fails_the_build_naming_its_line() {
    let source = r#"use tokio_multiprocessing as mp;

#[mp::main]
async fn @main() {
    let offset = 3u32;
    let p = mp::Process::new(move |x: u32| x + offset, 1); // HERE
    println!("{}", p.join().await.unwrap());
}
"#;
    let (ok, text) = cargo("build", "captures_number", source);
    assert!(!ok, "a closure capturing a u32 built:\n{text}");
    assert_says(&text, &["this one captures", "src/bin/captures_number.rs:"]);
}
