//! `connection::{Listener, Client}` against CPython's
//! `multiprocessing.connection`: its `Client` connects to our `Listener`
//! and ours to its `Listener`, with the authkey handshake both ways; a
//! wrong key fails on both sides; messages cross as
//! `send_bytes(msgpack.packb(x))`. And the listener's own guards: the
//! handshake's deadline, its 256-byte frames, plaintext beyond loopback.
//!
//! CPython comes from `MP_TEST_PYTHON` (which `.ci/run` points at a
//! virtual environment with `msgpack`), else `python3`. Without it the
//! interop cases say so and pass; without `msgpack`, only the case that
//! needs it does.

use std::process::Stdio;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_multiprocessing::connection::{Address, Client, Listener, NetError};

use crate::common::{Case, case, ensure};

const KEY: &[u8] = b"a shared secret";
const T: Duration = Duration::from_secs(30);

fn python() -> String {
    std::env::var("MP_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python` runs, with `msgpack` if asked; says why not if not.
async fn have_python(with_msgpack: bool) -> bool {
    let probe = if with_msgpack {
        "import msgpack"
    } else {
        "pass"
    };
    let ok = Command::new(python())
        .args(["-c", probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !ok {
        let what = if with_msgpack {
            "python3 with msgpack (MP_TEST_PYTHON)"
        } else {
            "python3"
        };
        eprintln!("skipped: {what} is not available");
    }
    ok
}

/// Starts `python -c script args...`, killed if the case ends first.
fn start_python(script: &str, args: &[&str]) -> Result<Child, Failed> {
    Ok(Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

/// Everything the program printed, and whether it succeeded.
async fn finish(child: Child) -> Result<(bool, String, String), Failed> {
    let out = child.wait_with_output().await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The port of a TCP address such as `127.0.0.1:40000`.
fn port_of(a: &Address) -> Result<String, Failed> {
    match a {
        Address::Inet(s) => Ok(s.rsplit_once(':').ok_or("no port")?.1.to_owned()),
        Address::Unix(p) => Err(format!("a path, {}", p.display()).into()),
    }
}

/// A CPython client: connects with the key in argv[3], sends one frame of
/// hand-made MessagePack (the array `[7, "py"]`), prints the reply's bytes
/// in hex.
const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
addr = (sys.argv[1], int(sys.argv[2])) if sys.argv[2] != "-" else sys.argv[1]
try:
    c = Client(addr, authkey=sys.argv[3].encode())
except Exception as e:
    print(type(e).__name__)
    sys.exit(0)
c.send_bytes(bytes([0x92, 0x07, 0xa2]) + b"py")
print(c.recv_bytes().hex())
c.close()
"#;

async fn a_python_client_passes_the_handshake_and_talks(unix: bool) -> Result<(), Failed> {
    if !have_python(false).await {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("mp-listener-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(if unix { "unix.sock" } else { "unused" });
    let _ = std::fs::remove_file(&path);
    let mut listener = if unix {
        Listener::bind(path.as_path(), Some(KEY)).await?
    } else {
        Listener::bind("127.0.0.1:0", Some(KEY)).await?
    };
    let (host, port) = if unix {
        (path.display().to_string(), "-".to_owned())
    } else {
        ("127.0.0.1".to_owned(), port_of(listener.address())?)
    };
    let key = std::str::from_utf8(KEY)?;
    let py = start_python(PY_CLIENT, &[&host, &port, key])?;
    let mut conn = listener.accept::<(u32, String)>().await?;
    let got = conn.recv().await?;
    ensure(got == (7, "py".to_owned()), format!("received {got:?}"))?;
    conn.send(&(8, "rust".to_owned())).await?;
    let (ok, out, err) = finish(py).await?;
    ensure(ok, format!("python failed: {err}"))?;
    // [8, "rust"] in MessagePack.
    ensure(
        out.trim() == "9208a472757374",
        format!("python received {out:?} ({err})"),
    )?;
    if unix {
        listener.close();
        ensure(!path.exists(), "the socket's path is removed on close")?;
    }
    Ok(())
}

async fn a_python_client_with_the_wrong_key_is_refused() -> Result<(), Failed> {
    if !have_python(false).await {
        return Ok(());
    }
    let mut listener = Listener::bind("127.0.0.1:0", Some(KEY)).await?;
    let port = port_of(listener.address())?;
    let py = start_python(PY_CLIENT, &["127.0.0.1", &port, "not the key"])?;
    let r = listener.accept::<(u32, String)>().await;
    ensure(
        matches!(r, Err(NetError::Authentication(_))),
        format!("accept: {r:?}"),
    )?;
    let (ok, out, err) = finish(py).await?;
    ensure(
        ok && out.trim() == "AuthenticationError",
        format!("python printed {out:?} ({err})"),
    )?;
    // The listener goes on: a client with the key gets through.
    let py = start_python(PY_CLIENT, &["127.0.0.1", &port, std::str::from_utf8(KEY)?])?;
    let mut conn = listener.accept::<(u32, String)>().await?;
    ensure(conn.recv().await?.0 == 7, "the next client's message")?;
    conn.send(&(1, String::new())).await?;
    finish(py).await?;
    Ok(())
}

/// A CPython listener: prints its port, accepts one client with the key in
/// argv[1], and answers each frame, a MessagePack fixint `n`, with `n + 1`
/// until the client hangs up.
const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
l = Listener(("127.0.0.1", 0), authkey=sys.argv[1].encode())
print(l.address[1], flush=True)
try:
    c = l.accept()
except Exception as e:
    print(type(e).__name__, flush=True)
    sys.exit(0)
try:
    while True:
        c.send_bytes(bytes([c.recv_bytes()[0] + 1]))
except EOFError:
    print("done", flush=True)
"#;

/// Starts the CPython listener and reads its port.
async fn python_listener(key: &str) -> Result<(Child, String), Failed> {
    let mut py = start_python(PY_LISTENER, &[key])?;
    let stdout = py.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = lines
        .next_line()
        .await?
        .ok_or("the listener printed no port")?;
    // The rest of its output is read at the end.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((py, port))
}

async fn a_rust_client_passes_a_python_listener_s_handshake() -> Result<(), Failed> {
    if !have_python(false).await {
        return Ok(());
    }
    let (py, port) = python_listener(std::str::from_utf8(KEY)?).await?;
    let mut conn = Client::connect::<u32>(format!("127.0.0.1:{port}"), Some(KEY)).await?;
    for n in [0u32, 41, 100] {
        conn.send(&n).await?;
        let back = conn.recv().await?;
        ensure(back == n + 1, format!("sent {n}, python answered {back}"))?;
    }
    drop(conn);
    let (ok, _, err) = finish(py).await?;
    ensure(ok, format!("python: {err}"))?;
    Ok(())
}

async fn a_rust_client_with_the_wrong_key_is_refused_by_python() -> Result<(), Failed> {
    if !have_python(false).await {
        return Ok(());
    }
    let (py, port) = python_listener(std::str::from_utf8(KEY)?).await?;
    let r = Client::connect::<u32>(format!("127.0.0.1:{port}"), Some(b"wrong")).await;
    ensure(
        matches!(r, Err(NetError::Authentication(_))),
        format!("connect: {r:?}"),
    )?;
    let (ok, _, err) = finish(py).await?;
    ensure(ok, format!("python: {err}"))?;
    Ok(())
}

/// CPython 3.12's side of the handshake, spelled out with Python's own
/// `hmac` (the Python here may be older): a `{sha256}` challenge checked
/// against `hmac.new(key, message, "sha256")`, then an answer to ours in
/// the digest it names. Prints whether it verified us, and the verdict on
/// its answer.
const PY_MODERN: &str = r##"
import sys, os, hmac
from multiprocessing.connection import Listener
l = Listener(("127.0.0.1", 0))
print(l.address[1], flush=True)
c = l.accept()
key = sys.argv[1].encode()
msg = b"{sha256}" + os.urandom(40)
c.send_bytes(b"#CHALLENGE#" + msg)
ok = hmac.compare_digest(c.recv_bytes(256), b"{sha256}" + hmac.new(key, msg, "sha256").digest())
c.send_bytes(b"#WELCOME#" if ok else b"#FAILURE#")
print("verified" if ok else "rejected", flush=True)
if ok:
    m = c.recv_bytes(256)[len(b"#CHALLENGE#"):]
    name = m[1:m.index(b"}")].decode()
    c.send_bytes(b"{" + name.encode() + b"}" + hmac.new(key, m, name).digest())
    print(c.recv_bytes(256).decode(), flush=True)
"##;

async fn the_sha256_handshake_matches_python_s_hmac() -> Result<(), Failed> {
    if !have_python(false).await {
        return Ok(());
    }
    for (key, want) in [(KEY, "verified #WELCOME#"), (&b"wrong"[..], "rejected")] {
        let mut py = start_python(PY_MODERN, &[std::str::from_utf8(KEY)?])?;
        let stdout = py.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = lines.next_line().await?.ok_or("no port")?;
        let r = Client::connect::<u32>(format!("127.0.0.1:{port}"), Some(key)).await;
        let mut said = Vec::new();
        while let Some(line) = lines.next_line().await? {
            said.push(line);
        }
        let said = said.join(" ");
        ensure(
            said == want,
            format!("python said {said:?}, wanted {want:?}"),
        )?;
        ensure(
            r.is_ok() == (key == KEY),
            format!("connect with {:?}: {r:?}", String::from_utf8_lossy(key)),
        )?;
        finish(py).await?;
    }
    Ok(())
}

/// CPython with `msgpack`: `send_bytes(msgpack.packb(x))` both ways, a
/// nested value of several types.
const PY_MSGPACK: &str = r#"
import sys, msgpack
from multiprocessing.connection import Client
c = Client(("127.0.0.1", int(sys.argv[1])), authkey=sys.argv[2].encode())
n, ratio, items, blob = msgpack.unpackb(c.recv_bytes())
c.send_bytes(msgpack.packb(
    {"n": n + 1, "ratio": ratio * 2, "items": items + ["from python"], "blob": blob[::-1]}
))
c.close()
"#;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Note {
    n: i64,
    ratio: f64,
    items: Vec<String>,
    blob: serde_bytes::ByteBuf,
}

async fn msgpack_values_cross_between_rust_and_python() -> Result<(), Failed> {
    if !have_python(true).await {
        return Ok(());
    }
    let mut listener = Listener::bind("127.0.0.1:0", Some(KEY)).await?;
    let port = port_of(listener.address())?;
    let py = start_python(PY_MSGPACK, &[&port, std::str::from_utf8(KEY)?])?;
    let mut conn = listener.accept::<Note>().await?;
    // A struct goes as the array of its fields, which Python reads as a
    // list; it may answer with a dict of the field names.
    let sent = Note {
        n: 41,
        ratio: 0.25,
        items: vec!["from rust".to_owned()],
        blob: serde_bytes::ByteBuf::from(vec![0, 255, 7]),
    };
    conn.send(&sent).await?;
    let back = conn.recv().await?;
    let want = Note {
        n: 42,
        ratio: 0.5,
        items: vec!["from rust".to_owned(), "from python".to_owned()],
        blob: serde_bytes::ByteBuf::from(vec![7, 255, 0]),
    };
    ensure(back == want, format!("back {back:?}"))?;
    let (ok, _, err) = finish(py).await?;
    ensure(ok, format!("python: {err}"))?;
    Ok(())
}

async fn rust_to_rust_over_ipv6_loopback() -> Result<(), Failed> {
    let mut listener = match Listener::bind("[::1]:0", Some(KEY)).await {
        Ok(l) => l,
        Err(NetError::Io { source, .. }) => {
            eprintln!("skipped: no IPv6 loopback here ({source})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let address = listener.address().clone();
    ensure(
        address.to_string().starts_with("[::1]:"),
        format!("bound {address}"),
    )?;
    let client = tokio::spawn(async move {
        let mut c = Client::connect::<String>(&address, Some(KEY)).await?;
        c.send(&"over v6".to_owned()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c.recv().await?)
    });
    let mut conn = listener.accept::<String>().await?;
    ensure(conn.recv().await? == "over v6", "the client's message")?;
    conn.send(&"back".to_owned()).await?;
    let reply = client.await?.map_err(|e| e.to_string())?;
    ensure(reply == "back", "the reply")?;
    Ok(())
}

async fn a_silent_peer_times_out_and_holds_up_nobody() -> Result<(), Failed> {
    let mut listener = Listener::builder("127.0.0.1:0")
        .authkey(KEY)
        .handshake_timeout(Duration::from_secs(3))
        .bind()
        .await?;
    let address = listener.address().to_string();
    // Connects, reads the challenge, and says nothing.
    let mut silent = tokio::net::TcpStream::connect(&address).await?;
    let address2 = address.clone();
    let good = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = Client::connect::<u32>(address2, Some(KEY)).await?;
        c.send(&5).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
    });
    let t0 = std::time::Instant::now();
    let mut conn = listener.accept::<u32>().await?;
    ensure(
        t0.elapsed() < Duration::from_secs(2),
        format!(
            "the good client waited {:?} behind the silent one",
            t0.elapsed()
        ),
    )?;
    ensure(conn.recv().await? == 5, "the good client's message")?;
    let r = listener.accept::<u32>().await;
    ensure(
        matches!(r, Err(NetError::HandshakeTimeout { .. })),
        format!("the silent peer: {r:?}"),
    )?;
    // It was sent the challenge and then dropped.
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).await?;
    ensure(
        rest.windows(11).any(|w| w == b"#CHALLENGE#"),
        "the silent peer got a challenge",
    )?;
    drop(good.await??);
    Ok(())
}

async fn a_frame_over_256_bytes_before_authentication_is_refused() -> Result<(), Failed> {
    let mut listener = Listener::bind("127.0.0.1:0", Some(KEY)).await?;
    let address = listener.address().to_string();
    let peer = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(&address).await?;
        // Reads the challenge frame, then claims a 1 MiB answer.
        let mut header = [0u8; 4];
        s.read_exact(&mut header).await?;
        let mut challenge = vec![0u8; u32::from_be_bytes(header) as usize];
        s.read_exact(&mut challenge).await?;
        s.write_all(&(1u32 << 20).to_be_bytes()).await?;
        s.write_all(&[0u8; 300]).await?;
        Ok::<_, std::io::Error>(())
    });
    let r = listener.accept::<u32>().await;
    ensure(
        matches!(
            &r,
            Err(NetError::Handshake {
                source: tokio_multiprocessing::ChannelError::Oversized { max: 256, .. },
                ..
            })
        ),
        format!("accept: {r:?}"),
    )?;
    peer.await??;
    Ok(())
}

async fn a_listener_beyond_loopback_needs_tls_or_plaintext_said() -> Result<(), Failed> {
    let r = Listener::bind("0.0.0.0:0", Some(KEY)).await;
    let Err(NetError::Plaintext { address }) = r else {
        return Err(format!("bind 0.0.0.0: {r:?}").into());
    };
    let text = NetError::Plaintext {
        address: address.clone(),
    }
    .to_string();
    ensure(
        text.contains("insecure_plaintext") && text.contains("TLS"),
        format!("the error says why and what to do: {text}"),
    )?;
    let l = Listener::builder("0.0.0.0:0")
        .insecure_plaintext()
        .bind()
        .await?;
    ensure(
        l.address().to_string().starts_with("0.0.0.0:"),
        format!("{}", l.address()),
    )?;
    Ok(())
}

async fn without_a_key_there_is_no_handshake() -> Result<(), Failed> {
    let mut listener = Listener::bind("127.0.0.1:0", None).await?;
    let address = listener.address().clone();
    let client = tokio::spawn(async move {
        let c = Client::connect::<Vec<u32>>(address, None).await?;
        c.send(&vec![1, 2, 3]).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
    });
    let mut conn = listener.accept::<Vec<u32>>().await?;
    ensure(conn.recv().await? == [1, 2, 3], "the message")?;
    drop(client.await??);
    // A key on one side only: the keyless side sees a challenge frame
    // where it expects a message, and the keyed side times out or fails.
    let mut keyed = Listener::builder("127.0.0.1:0")
        .authkey(KEY)
        .handshake_timeout(Duration::from_millis(200))
        .bind()
        .await?;
    let address = keyed.address().clone();
    let mut c = Client::connect::<u32>(address, None).await?;
    let r = keyed.accept::<u32>().await;
    ensure(
        r.is_err(),
        format!("keyed accept of a keyless client: {r:?}"),
    )?;
    ensure(
        c.recv().await.is_err(),
        "the keyless client reads no message",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("a_python_client_passes_the_handshake_over_tcp", T, || {
            a_python_client_passes_the_handshake_and_talks(false)
        }),
        case(
            "a_python_client_passes_the_handshake_over_a_unix_path",
            T,
            || a_python_client_passes_the_handshake_and_talks(true),
        ),
        case(
            "a_python_client_with_the_wrong_key_is_refused",
            T,
            a_python_client_with_the_wrong_key_is_refused,
        ),
        case(
            "a_rust_client_passes_a_python_listener_s_handshake",
            T,
            a_rust_client_passes_a_python_listener_s_handshake,
        ),
        case(
            "a_rust_client_with_the_wrong_key_is_refused_by_python",
            T,
            a_rust_client_with_the_wrong_key_is_refused_by_python,
        ),
        case(
            "the_sha256_handshake_matches_python_s_hmac",
            T,
            the_sha256_handshake_matches_python_s_hmac,
        ),
        case(
            "msgpack_values_cross_between_rust_and_python",
            T,
            msgpack_values_cross_between_rust_and_python,
        ),
        case(
            "rust_to_rust_over_ipv6_loopback",
            T,
            rust_to_rust_over_ipv6_loopback,
        ),
        case(
            "a_silent_peer_times_out_and_holds_up_nobody",
            T,
            a_silent_peer_times_out_and_holds_up_nobody,
        ),
        case(
            "a_frame_over_256_bytes_before_authentication_is_refused",
            T,
            a_frame_over_256_bytes_before_authentication_is_refused,
        ),
        case(
            "a_listener_beyond_loopback_needs_tls_or_plaintext_said",
            T,
            a_listener_beyond_loopback_needs_tls_or_plaintext_said,
        ),
        case(
            "without_a_key_there_is_no_handshake",
            T,
            without_a_key_there_is_no_handshake,
        ),
    ]
}
