//! `Listener` and `Client` over TLS (rustls), with certificates made in
//! the test (rcgen): messages both ways with the authkey handshake inside
//! the session, large ones too; an untrusted certificate, a name that
//! does not match, and a peer that speaks no TLS all fail with a TLS
//! error; a listener with TLS may bind beyond loopback; a close crosses
//! the relay.

use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing::ChannelError;
use tokio_multiprocessing::connection::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use tokio_multiprocessing::connection::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_multiprocessing::connection::{Client, Listener, NetError};

use crate::common::{Case, case, ensure};

const KEY: &[u8] = b"a shared secret";
const T: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key.
fn certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), Failed> {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((made.cert.der().clone(), key.into()))
}

fn server_config(
    cert: &CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Failed> {
    Ok(Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)?,
    ))
}

/// A client that trusts `trusted` only.
fn client_config(trusted: &CertificateDer<'static>) -> Result<Arc<ClientConfig>, Failed> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone())?;
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

// Unix only (see `cases`).
#[cfg_attr(windows, allow(dead_code))]
async fn tls_and_the_authkey_carry_messages_both_ways() -> Result<(), Failed> {
    let (cert, key) = certificate()?;
    let mut listener = Listener::builder("127.0.0.1:0")
        .authkey(KEY)
        .tls(server_config(&cert, key)?)
        .bind()
        .await?;
    let address = listener.address().clone();
    let client_tls = client_config(&cert)?;
    let client = tokio::spawn(async move {
        let mut c = Client::builder(address)
            .authkey(KEY)
            .tls(client_tls)
            .connect::<Vec<u8>>()
            .await?;
        c.send(&b"hello".to_vec()).await?;
        let big = c.recv().await?;
        c.send(&big).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let mut conn = listener.accept::<Vec<u8>>().await?;
    ensure(conn.recv().await? == b"hello", "the client's message")?;
    // More than a TLS record and a socket buffer: it crosses the relay in
    // pieces, both ways.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    conn.send(&big).await?;
    ensure(conn.recv().await? == big, "3 MB echoed through TLS")?;
    client.await?.map_err(|e| e.to_string())?;
    // The client's end went with its task: the close crosses the relay.
    let after = conn.recv().await;
    ensure(
        matches!(after, Err(ChannelError::Closed)),
        format!("after the client closed: {after:?}"),
    )?;
    Ok(())
}

async fn an_untrusted_certificate_fails_with_a_tls_error() -> Result<(), Failed> {
    let (cert, key) = certificate()?;
    let (other, _) = certificate()?;
    let mut listener = Listener::builder("127.0.0.1:0")
        .tls(server_config(&cert, key)?)
        .bind()
        .await?;
    let address = listener.address().clone();
    let distrusting = client_config(&other)?;
    let client = tokio::spawn(async move {
        Client::builder(address)
            .tls(distrusting)
            .connect::<u32>()
            .await
            .map(|_| ())
    });
    let accepted = listener.accept::<u32>().await;
    let connected = client.await?;
    ensure(
        matches!(connected, Err(NetError::Tls { .. })),
        format!("client: {connected:?}"),
    )?;
    ensure(
        matches!(accepted, Err(NetError::Tls { .. })),
        format!("listener: {accepted:?}"),
    )?;
    Ok(())
}

async fn a_name_the_certificate_lacks_fails() -> Result<(), Failed> {
    let (cert, key) = certificate()?;
    let mut listener = Listener::builder("127.0.0.1:0")
        .tls(server_config(&cert, key)?)
        .bind()
        .await?;
    let address = listener.address().clone();
    let tls = client_config(&cert)?;
    let client = tokio::spawn(async move {
        Client::builder(address)
            .tls(tls)
            .tls_server_name("elsewhere.example")?
            .connect::<u32>()
            .await
            .map(|_| ())
    });
    let _ = listener.accept::<u32>().await;
    let connected = client.await?;
    ensure(
        matches!(connected, Err(NetError::Tls { .. })),
        format!("client: {connected:?}"),
    )?;
    Ok(())
}

async fn a_peer_without_tls_gets_nowhere() -> Result<(), Failed> {
    let (cert, key) = certificate()?;
    let mut listener = Listener::builder("127.0.0.1:0")
        .authkey(KEY)
        .tls(server_config(&cert, key)?)
        .handshake_timeout(Duration::from_millis(500))
        .bind()
        .await?;
    let address = listener.address().clone();
    let client = tokio::spawn(async move {
        Client::builder(address)
            .authkey(KEY)
            .handshake_timeout(Duration::from_millis(500))
            .connect::<u32>()
            .await
            .map(|_| ())
    });
    let accepted = listener.accept::<u32>().await;
    ensure(accepted.is_err(), format!("listener: {accepted:?}"))?;
    let connected = client.await?;
    ensure(
        connected.is_err(),
        format!("plaintext client: {connected:?}"),
    )?;
    Ok(())
}

async fn a_listener_with_tls_may_bind_beyond_loopback() -> Result<(), Failed> {
    let (cert, key) = certificate()?;
    let mut listener = Listener::builder("0.0.0.0:0")
        .authkey(KEY)
        .tls(server_config(&cert, key)?)
        .bind()
        .await?;
    let port = listener
        .address()
        .to_string()
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .ok_or("no port")?;
    let tls = client_config(&cert)?;
    let client = tokio::spawn(async move {
        let c = Client::builder(format!("localhost:{port}"))
            .authkey(KEY)
            .tls(tls)
            .connect::<u32>()
            .await?;
        c.send(&9).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
    });
    let mut conn = listener.accept::<u32>().await?;
    ensure(conn.recv().await? == 9, "the message")?;
    drop(client.await?.map_err(|e| e.to_string())?);
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "tls_and_the_authkey_carry_messages_both_ways",
            T,
            tls_and_the_authkey_carry_messages_both_ways,
        ),
        case(
            "an_untrusted_certificate_fails_with_a_tls_error",
            T,
            an_untrusted_certificate_fails_with_a_tls_error,
        ),
        case(
            "a_name_the_certificate_lacks_fails",
            T,
            a_name_the_certificate_lacks_fails,
        ),
        case(
            "a_peer_without_tls_gets_nowhere",
            T,
            a_peer_without_tls_gets_nowhere,
        ),
        case(
            "a_listener_with_tls_may_bind_beyond_loopback",
            T,
            a_listener_with_tls_may_bind_beyond_loopback,
        ),
    ]
}
