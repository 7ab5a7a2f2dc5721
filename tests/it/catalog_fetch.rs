//! `catalog::fetch` against a real HTTPS server on loopback: a test CA and a `localhost`
//! certificate made with rcgen at run time, tokio-rustls serving a scripted queue of HTTP/1.1
//! answers and recording the requests it received. Covers trust (only the configured roots),
//! ETag revalidation, the sanity guard keeping the last good copy, Retry-After, the body cap,
//! the timeout, and the `catalog fetch` command.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ddm_update_operator::catalog::fetch::{
    DEFAULT_MAX_BODY_BYTES, FetchConfig, FetchError, Fetched, Fetcher, LastGood, Refresh, refresh,
};
use ddm_update_operator::catalog::guard::Suspicious;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Every non-empty real snapshot, in date order.
const SNAPSHOTS: [&str; 7] = [
    "pmv-2024-06-30.json",
    "pmv-2024-09-16.json",
    "pmv-2025-05-21.json",
    "pmv-2025-09-16.json",
    "pmv-2025-10-30.json",
    "pmv-2026-03-17.json",
    "pmv-2026-08-22.json",
];
const EMPTY_SNAPSHOT: &str = "pmv-2024-11-14-empty.json";
const LATEST_SNAPSHOT: &str = "pmv-2026-08-22.json";

/// No single step of a test may take longer than this.
const STEP_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gdmf")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The latest snapshot with `AssetSets.iOS` cut down to its first entry.
fn collapsed_snapshot() -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&fixture(LATEST_SNAPSHOT)).expect("the snapshot is JSON");
    value["AssetSets"]["iOS"]
        .as_array_mut()
        .expect("the snapshot has AssetSets.iOS")
        .truncate(1);
    serde_json::to_vec(&value).expect("JSON encodes")
}

// ---------------------------------------------------------------------------------------------
// Test PKI

/// A CA made for one test, and a server configuration with a `localhost` certificate it issued.
struct TestPki {
    ca_pem: String,
    server_config: Arc<rustls::ServerConfig>,
}

fn test_pki() -> TestPki {
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ddm-update-operator test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("a self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("a server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("the CA signs the server certificate");

    // No ALPN: the client falls back to HTTP/1.1, which is all this server speaks.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], server_key.into())
        .expect("the server certificate and key match");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config),
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted HTTPS server

/// How a scripted body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
    /// No length at all: the body ends when the connection closes.
    UntilClose,
    /// Read the request, then say nothing until the test ends.
    NeverAnswer,
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
            framing: Framing::ContentLength,
        }
    }

    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::ContentLength,
        }
    }

    fn never_answer() -> Self {
        Reply {
            framing: Framing::NeverAnswer,
            ..Reply::status(200)
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn etag(self, etag: &str) -> Self {
        self.header("ETag", etag)
    }

    fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
}

/// A request as the server received it; header names in lower case.
#[derive(Debug, Clone)]
struct SeenRequest {
    request_line: String,
    headers: Vec<(String, String)>,
}

impl SeenRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ServerLog {
    connections: AtomicUsize,
    requests: Mutex<Vec<SeenRequest>>,
}

/// An HTTPS server on 127.0.0.1 answering from a script. It stops once every reply is sent,
/// and is aborted when dropped.
struct TestServer {
    port: u16,
    ca_pem: String,
    log: Arc<ServerLog>,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(script: Vec<Reply>) -> Self {
        Self::start_with(test_pki(), script).await
    }

    async fn start_with(pki: TestPki, script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let log = Arc::new(ServerLog::default());
        let acceptor = TlsAcceptor::from(pki.server_config);
        let task = tokio::spawn(serve(listener, acceptor, script.into(), log.clone()));
        TestServer {
            port,
            ca_pem: pki.ca_pem,
            log,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/v2/pmv", self.port)
    }

    /// A configuration that trusts this server's CA only.
    fn config(&self) -> FetchConfig {
        FetchConfig {
            url: self.url(),
            trusted_roots_pem: self.ca_pem.clone().into_bytes(),
            timeout: Duration::from_secs(10),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher::new(self.config()).expect("the test CA loads")
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.log.requests.lock().expect("log lock").clone()
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut script: VecDeque<Reply>,
    log: Arc<ServerLog>,
) {
    while let Some(reply) = script.front() {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        log.connections.fetch_add(1, Ordering::SeqCst);
        // A client that refuses our certificate ends the handshake; the reply stays queued.
        let Ok(Ok(mut tls)) = tokio::time::timeout(STEP_LIMIT, acceptor.accept(tcp)).await else {
            continue;
        };
        let Ok(Ok(Some(request))) = tokio::time::timeout(STEP_LIMIT, read_request(&mut tls)).await
        else {
            continue;
        };
        log.requests.lock().expect("log lock").push(request);
        if reply.framing == Framing::NeverAnswer {
            tokio::time::sleep(Duration::from_secs(60)).await;
        } else {
            // The client may hang up early (a body over the cap): not the server's problem.
            let _ = answer(&mut tls, reply).await;
        }
        script.pop_front();
    }
}

/// Reads a request head (a GET has no body); `None` if the client hung up first.
async fn read_request(tls: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<SeenRequest>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buffer).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(Some(SeenRequest {
        request_line,
        headers,
    }))
}

async fn answer(tls: &mut (impl AsyncWrite + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Scripted\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match reply.framing {
        Framing::ContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        }
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose | Framing::NeverAnswer => {}
    }
    head.push_str("Connection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await?;
    if reply.framing == Framing::Chunked {
        for chunk in reply.body.chunks(4096) {
            tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            tls.write_all(chunk).await?;
            tls.write_all(b"\r\n").await?;
        }
        tls.write_all(b"0\r\n\r\n").await?;
    } else {
        tls.write_all(&reply.body).await?;
    }
    tls.flush().await?;
    // close_notify: a close-delimited body ends cleanly.
    tls.shutdown().await
}

/// A loopback port that accepts connections and never says a word (not even TLS).
async fn silent_listener() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => held.push(tcp),
                    Err(_) => return,
                },
                () = &mut deadline => return,
            }
        }
    });
    (port, task)
}

/// A plain-HTTP (no TLS) server on 127.0.0.1 answering from a script, logging what reaches
/// it; a redirect target the client must never contact.
async fn plain_http_server(script: Vec<Reply>) -> (u16, Arc<ServerLog>, JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    let log = Arc::new(ServerLog::default());
    let server_log = log.clone();
    let task = tokio::spawn(async move {
        for reply in script {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            server_log.connections.fetch_add(1, Ordering::SeqCst);
            if let Ok(Ok(Some(request))) =
                tokio::time::timeout(STEP_LIMIT, read_request(&mut tcp)).await
            {
                server_log.requests.lock().expect("log lock").push(request);
                let _ = answer(&mut tcp, &reply).await;
            }
        }
    });
    (port, log, task)
}

// ---------------------------------------------------------------------------------------------
// Helpers for the client side

/// Awaits `future`, failing the test if it takes longer than [`STEP_LIMIT`].
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP_LIMIT, future)
        .await
        .expect("the step finished in time")
}

fn store() -> (tempfile::TempDir, LastGood) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = LastGood::new(dir.path().join("catalog"));
    (dir, store)
}

fn stored_body(store: &LastGood) -> Vec<u8> {
    std::fs::read(store.body_path()).expect("the last good copy is on disk")
}

fn body_of(fetched: Fetched) -> (Vec<u8>, Option<String>) {
    match fetched {
        Fetched::Body { bytes, etag } => (bytes, etag),
        Fetched::NotModified => panic!("expected a body, got 304"),
    }
}

/// Runs one refresh that must accept and store a new catalog.
async fn refresh_expecting_update(fetcher: &Fetcher, store: &LastGood) {
    match bounded(refresh(fetcher, store)).await {
        Ok(Refresh::Updated(_)) => {}
        other => panic!("expected the catalog to be updated, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Trust

#[tokio::test]
async fn trusting_the_test_ca_fetches_a_real_snapshot_with_our_user_agent() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![Reply::ok(snapshot.clone()).etag("\"v1\"")]).await;

    let (bytes, etag) = body_of(
        bounded(server.fetcher().get(None))
            .await
            .expect("the fetch succeeds"),
    );

    assert_eq!(bytes, snapshot);
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.request_line, "GET /v2/pmv HTTP/1.1");
    let user_agent = request.header("user-agent").expect("a User-Agent was sent");
    assert!(
        user_agent.starts_with("ddm-update-operator/"),
        "User-Agent {user_agent:?} names the operator"
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.header("if-none-match"), None);
}

#[tokio::test]
async fn the_default_apple_root_does_not_trust_the_test_server() {
    let server = TestServer::start(vec![Reply::ok(fixture(LATEST_SNAPSHOT))]).await;
    let fetcher = Fetcher::new(FetchConfig {
        url: server.url(),
        timeout: Duration::from_secs(10),
        ..FetchConfig::default()
    })
    .expect("the embedded Apple root loads");

    let error = bounded(fetcher.get(None))
        .await
        .expect_err("the test certificate does not chain to Apple Root CA");

    assert!(
        matches!(error, FetchError::Transport { .. }),
        "expected a transport error, got {error:?}"
    );
    assert!(server.connections() >= 1, "the client did connect");
    assert!(
        server.requests().is_empty(),
        "no request goes out over an untrusted connection"
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let server = TestServer::start(vec![Reply::ok(fixture(LATEST_SNAPSHOT))]).await;
    let other_ca = test_pki().ca_pem;
    let fetcher = Fetcher::new(FetchConfig {
        trusted_roots_pem: other_ca.into_bytes(),
        ..server.config()
    })
    .expect("the other CA loads");

    let error = bounded(fetcher.get(None))
        .await
        .expect_err("the server's CA is not trusted");

    assert!(
        matches!(error, FetchError::Transport { .. }),
        "expected a transport error, got {error:?}"
    );
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_redirect_away_from_https_is_refused_and_not_followed() {
    let (plain_port, plain_log, plain) =
        plain_http_server(vec![Reply::ok(fixture(LATEST_SNAPSHOT))]).await;
    let server = TestServer::start(vec![
        Reply::status(302).header("Location", &format!("http://127.0.0.1:{plain_port}/v2/pmv")),
    ])
    .await;
    let (_dir, store) = store();

    let error = bounded(refresh(&server.fetcher(), &store))
        .await
        .expect_err("a redirect to plain HTTP is refused");

    match &error {
        FetchError::Transport { source, .. } => {
            assert!(source.is_redirect(), "a redirect error, got {source:?}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert_eq!(
        server.requests().len(),
        1,
        "the HTTPS server was asked once"
    );
    assert_eq!(
        plain_log.connections.load(Ordering::SeqCst),
        0,
        "the plain-HTTP server was never contacted"
    );
    assert!(plain_log.requests.lock().expect("log lock").is_empty());
    assert!(!store.body_path().exists(), "nothing was stored");
    assert!(store.load().expect("the store reads").is_none());
    assert!(store.meta().last_problem.is_some());

    // The plain-HTTP server was there all along: asked directly, it answers.
    let direct = Fetcher::new(FetchConfig {
        url: format!("http://127.0.0.1:{plain_port}/v2/pmv"),
        ..server.config()
    })
    .expect("the test CA loads");
    let (bytes, _) = body_of(
        bounded(direct.get(None))
            .await
            .expect("the plain-HTTP server answers"),
    );
    assert_eq!(bytes, fixture(LATEST_SNAPSHOT));
    assert_eq!(plain_log.connections.load(Ordering::SeqCst), 1);
    plain.abort();
}

#[test]
fn a_bundle_without_certificates_is_a_roots_error() {
    for pem in [&b""[..], b"not a certificate\n"] {
        let error = Fetcher::new(FetchConfig {
            trusted_roots_pem: pem.to_vec(),
            ..FetchConfig::default()
        })
        .expect_err("no root to trust");
        assert!(
            matches!(error, FetchError::Roots(_)),
            "expected a roots error, got {error:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ETag

#[tokio::test]
async fn a_304_after_an_etag_keeps_the_stored_copy() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::ok(snapshot.clone()).etag("\"abc123\""),
        Reply::status(304).etag("\"abc123\""),
    ])
    .await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();

    refresh_expecting_update(&fetcher, &store).await;
    assert_eq!(stored_body(&store), snapshot);
    let meta = store.meta();
    assert_eq!(meta.etag.as_deref(), Some("\"abc123\""));
    assert_eq!(meta.url, server.url());
    assert!(meta.fetched_at.is_some());

    let second = bounded(refresh(&fetcher, &store))
        .await
        .expect("a 304 is not an error");

    assert!(
        matches!(second, Refresh::NotModified),
        "expected NotModified, got {second:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header("if-none-match"), None);
    assert_eq!(requests[1].header("if-none-match"), Some("\"abc123\""));
    assert_eq!(stored_body(&store), snapshot);
    let meta = store.meta();
    assert_eq!(meta.etag.as_deref(), Some("\"abc123\""));
    assert_eq!(meta.last_problem, None);
}

#[tokio::test]
async fn an_etag_from_another_url_is_not_sent() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::ok(snapshot.clone()).etag("\"first\""),
        Reply::ok(snapshot).etag("\"second\""),
    ])
    .await;
    let (_dir, store) = store();
    refresh_expecting_update(&server.fetcher(), &store).await;

    let elsewhere = Fetcher::new(FetchConfig {
        url: format!("{}?elsewhere", server.url()),
        ..server.config()
    })
    .expect("the test CA loads");
    refresh_expecting_update(&elsewhere, &store).await;

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("if-none-match"), None);
    assert_eq!(store.meta().etag.as_deref(), Some("\"second\""));
}

#[tokio::test]
async fn a_304_to_a_request_without_an_etag_is_an_error_and_does_not_mark_fresh() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        // An empty store: nothing to revalidate.
        Reply::status(304).etag("\"stray\""),
        // A copy from the default URL, then a 304 at another URL, which never saw our ETag.
        Reply::ok(snapshot.clone()).etag("\"first\""),
        Reply::status(304).etag("\"first\""),
    ])
    .await;
    let (_dir, store) = store();

    let error = bounded(refresh(&server.fetcher(), &store))
        .await
        .expect_err("a 304 with nothing cached is an error");

    assert!(
        matches!(error, FetchError::UnexpectedNotModified { .. }),
        "expected UnexpectedNotModified, got {error:?}"
    );
    assert!(!store.body_path().exists(), "no pmv.json was created");
    assert!(store.load().expect("the store reads").is_none());
    let meta = store.meta();
    assert_eq!(meta.fetched_at, None, "the store is not marked fresh");
    let problem = meta.last_problem.expect("the problem is recorded");
    assert!(problem.contains("304"), "{problem:?}");

    refresh_expecting_update(&server.fetcher(), &store).await;
    let fetched_at = store
        .meta()
        .fetched_at
        .expect("the good answer is recorded");
    let elsewhere = Fetcher::new(FetchConfig {
        url: format!("{}?elsewhere", server.url()),
        ..server.config()
    })
    .expect("the test CA loads");

    let error = bounded(refresh(&elsewhere, &store))
        .await
        .expect_err("a 304 to a request that named no ETag is an error");

    assert!(
        matches!(error, FetchError::UnexpectedNotModified { .. }),
        "expected UnexpectedNotModified, got {error:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.iter().all(|r| r.header("if-none-match").is_none()),
        "no request named an ETag: {requests:?}"
    );
    assert_eq!(
        stored_body(&store),
        snapshot,
        "the stored copy is untouched"
    );
    let meta = store.meta();
    assert_eq!(
        meta.fetched_at,
        Some(fetched_at),
        "fetched_at is not updated"
    );
    assert_eq!(
        meta.url,
        server.url(),
        "the copy still belongs to its own URL"
    );
    assert_eq!(meta.etag.as_deref(), Some("\"first\""));
    assert!(meta.last_problem.is_some(), "the problem is recorded");
}

// ---------------------------------------------------------------------------------------------
// The sanity guard

/// Serves `good`, then `bad`; returns the error of the second refresh.
async fn refresh_good_then(bad: Vec<u8>) -> (FetchError, Vec<u8>, LastGood, tempfile::TempDir) {
    let good = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::ok(good.clone()).etag("\"good\""),
        Reply::ok(bad).etag("\"bad\""),
    ])
    .await;
    let fetcher = server.fetcher();
    let (dir, store) = store();
    refresh_expecting_update(&fetcher, &store).await;

    let error = bounded(refresh(&fetcher, &store))
        .await
        .expect_err("the second answer is refused");

    assert_eq!(
        server.requests()[1].header("if-none-match"),
        Some("\"good\"")
    );
    (error, good, store, dir)
}

fn assert_last_good_kept(store: &LastGood, good: &[u8], problem: &str) {
    assert_eq!(stored_body(store), good, "pmv.json is the last good copy");
    let meta = store.meta();
    let last_problem = meta.last_problem.expect("the problem is recorded");
    assert!(
        last_problem.contains(problem),
        "last_problem {last_problem:?} mentions {problem:?}"
    );
    assert_eq!(
        meta.etag.as_deref(),
        Some("\"good\""),
        "the validator still matches the stored copy"
    );
    let (bytes, _) = store
        .load()
        .expect("the store reads")
        .expect("a copy is stored");
    assert_eq!(bytes, good);
}

#[tokio::test]
async fn the_empty_2024_11_14_answer_is_refused_after_a_good_one() {
    let (error, good, store, _dir) = refresh_good_then(fixture(EMPTY_SNAPSHOT)).await;

    match &error {
        FetchError::Refused { reason, .. } => assert_eq!(*reason, Suspicious::Empty),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_last_good_kept(&store, &good, "every set is empty");
}

#[tokio::test]
async fn a_collapsed_catalog_is_refused_after_a_good_one() {
    let (error, good, store, _dir) = refresh_good_then(collapsed_snapshot()).await;

    match &error {
        FetchError::Refused { reason, .. } => assert_eq!(
            *reason,
            Suspicious::Collapsed {
                set: "AssetSets",
                platform: "iOS",
                before: 46,
                after: 1,
            }
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_last_good_kept(&store, &good, "AssetSets.iOS fell from 46 to 1");
}

#[tokio::test]
async fn malformed_json_is_a_parse_error_and_the_last_good_copy_stays() {
    let (error, good, store, _dir) =
        refresh_good_then(b"{\"AssetSets\": {\"iOS\": [".to_vec()).await;

    assert!(
        matches!(error, FetchError::Parse { .. }),
        "expected a parse error, got {error:?}"
    );
    assert_last_good_kept(&store, &good, "not a pmv catalog");
}

#[tokio::test]
async fn an_empty_answer_is_refused_with_nothing_stored_yet() {
    let server = TestServer::start(vec![Reply::ok(fixture(EMPTY_SNAPSHOT))]).await;
    let (_dir, store) = store();

    let error = bounded(refresh(&server.fetcher(), &store))
        .await
        .expect_err("an empty first answer is refused");

    assert!(
        matches!(
            error,
            FetchError::Refused {
                reason: Suspicious::Empty,
                ..
            }
        ),
        "expected an empty refusal, got {error:?}"
    );
    assert!(!store.body_path().exists(), "nothing was stored");
    assert!(store.load().expect("the store reads").is_none());
    assert!(store.meta().last_problem.is_some());
}

#[tokio::test]
async fn every_consecutive_pair_of_real_snapshots_is_accepted() {
    let etag = |i: usize| format!("\"snapshot-{i}\"");
    let script = SNAPSHOTS
        .iter()
        .enumerate()
        .map(|(i, name)| Reply::ok(fixture(name)).etag(&etag(i)))
        .collect();
    let server = TestServer::start(script).await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();

    for (i, name) in SNAPSHOTS.iter().enumerate() {
        match bounded(refresh(&fetcher, &store)).await {
            Ok(Refresh::Updated(_)) => {}
            other => panic!("{name} after its predecessor: expected an update, got {other:?}"),
        }
        assert_eq!(stored_body(&store), fixture(name), "{name} is stored");
        let meta = store.meta();
        assert_eq!(meta.etag, Some(etag(i)));
        assert_eq!(meta.last_problem, None);
    }

    let requests = server.requests();
    assert_eq!(requests.len(), SNAPSHOTS.len());
    for (i, request) in requests.iter().enumerate().skip(1) {
        assert_eq!(
            request.header("if-none-match"),
            Some(etag(i - 1).as_str()),
            "request {i} revalidates the previous snapshot"
        );
    }
}

#[tokio::test]
async fn a_good_answer_after_a_refusal_clears_the_problem() {
    let good = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::ok(good.clone()).etag("\"good\""),
        Reply::ok(fixture(EMPTY_SNAPSHOT)),
        Reply::ok(good.clone()).etag("\"good-again\""),
    ])
    .await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();
    refresh_expecting_update(&fetcher, &store).await;
    bounded(refresh(&fetcher, &store))
        .await
        .expect_err("the empty answer is refused");
    assert!(store.meta().last_problem.is_some());

    refresh_expecting_update(&fetcher, &store).await;

    let meta = store.meta();
    assert_eq!(meta.last_problem, None);
    assert_eq!(meta.etag.as_deref(), Some("\"good-again\""));
    assert_eq!(stored_body(&store), good);
}

#[tokio::test]
async fn a_damaged_stored_copy_does_not_block_the_refresh_that_repairs_it() {
    let repair = fixture(SNAPSHOTS[5]);
    let server = TestServer::start(vec![
        Reply::ok(fixture(LATEST_SNAPSHOT)).etag("\"v1\""),
        Reply::ok(fixture(EMPTY_SNAPSHOT)).etag("\"empty\""),
        Reply::ok(repair.clone()).etag("\"v2\""),
    ])
    .await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();
    refresh_expecting_update(&fetcher, &store).await;
    let damaged = b"{\"AssetSets\": {\"iOS\": [".to_vec();
    std::fs::write(store.body_path(), &damaged).expect("pmv.json is overwritten");
    assert!(
        matches!(store.load(), Err(FetchError::Store { .. })),
        "the stored copy is damaged"
    );

    // With nothing usable to compare against, the guard still refuses an empty answer.
    let error = bounded(refresh(&fetcher, &store))
        .await
        .expect_err("an empty answer is refused");
    assert!(
        matches!(
            error,
            FetchError::Refused {
                reason: Suspicious::Empty,
                ..
            }
        ),
        "expected an empty refusal, got {error:?}"
    );
    assert_eq!(
        stored_body(&store),
        damaged,
        "a refused answer stores nothing"
    );

    refresh_expecting_update(&fetcher, &store).await;

    assert_eq!(stored_body(&store), repair, "pmv.json is the served body");
    assert!(store.load().expect("the store reads again").is_some());
    let meta = store.meta();
    assert_eq!(meta.etag.as_deref(), Some("\"v2\""));
    assert_eq!(meta.last_problem, None);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[1].header("if-none-match"),
        None,
        "the damaged copy's ETag is not sent"
    );
    assert_eq!(requests[2].header("if-none-match"), None);
}

// ---------------------------------------------------------------------------------------------
// Retry-After

#[tokio::test]
async fn retry_after_defers_the_next_refresh_without_asking_the_server() {
    let server = TestServer::start(vec![
        Reply::status(503).header("Retry-After", "120"),
        Reply::ok(fixture(LATEST_SNAPSHOT)),
    ])
    .await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();

    let before = jiff::Timestamp::now();
    let error = bounded(refresh(&fetcher, &store))
        .await
        .expect_err("a 503 is an error");
    let after = jiff::Timestamp::now();

    match &error {
        FetchError::Status {
            status,
            retry_after,
            ..
        } => {
            assert_eq!(*status, 503);
            assert_eq!(*retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    let meta = store.meta();
    let not_before = meta.not_before.expect("not_before is stored");
    let wait = jiff::SignedDuration::from_secs(120);
    assert!(
        not_before >= before + wait && not_before <= after + wait,
        "not_before {not_before} is 120 s after the request ({before} .. {after})"
    );
    let last_problem = meta.last_problem.expect("the problem is recorded");
    assert!(last_problem.contains("503"), "{last_problem:?}");

    let deferred = bounded(refresh(&fetcher, &store))
        .await
        .expect_err("the server asked to wait");

    match deferred {
        FetchError::Deferred { until, .. } => assert_eq!(until, not_before),
        other => panic!("expected a deferral, got {other:?}"),
    }
    assert_eq!(
        server.connections(),
        1,
        "the server was not contacted again"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn retry_after_zero_does_not_defer_and_a_success_clears_it() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::status(429).header("Retry-After", "0"),
        Reply::ok(snapshot.clone()),
    ])
    .await;
    let fetcher = server.fetcher();
    let (_dir, store) = store();

    let error = bounded(refresh(&fetcher, &store))
        .await
        .expect_err("a 429 is an error");
    assert_eq!(error.retry_after(), Some(Duration::ZERO));

    refresh_expecting_update(&fetcher, &store).await;

    let meta = store.meta();
    assert_eq!(meta.not_before, None);
    assert_eq!(meta.last_problem, None);
    assert_eq!(stored_body(&store), snapshot);
}

#[tokio::test]
async fn a_status_error_without_retry_after_does_not_defer() {
    let server = TestServer::start(vec![Reply::status(500)]).await;
    let (_dir, store) = store();

    let error = bounded(refresh(&server.fetcher(), &store))
        .await
        .expect_err("a 500 is an error");

    assert!(
        matches!(
            error,
            FetchError::Status {
                status: 500,
                retry_after: None,
                ..
            }
        ),
        "expected a plain status error, got {error:?}"
    );
    assert_eq!(store.meta().not_before, None);
}

// ---------------------------------------------------------------------------------------------
// Body cap and timeout

fn capped(server: &TestServer, max_body_bytes: usize) -> Fetcher {
    Fetcher::new(FetchConfig {
        max_body_bytes,
        ..server.config()
    })
    .expect("the test CA loads")
}

#[tokio::test]
async fn a_body_over_the_cap_is_too_large_whatever_its_framing() {
    for framing in [
        Framing::ContentLength,
        Framing::Chunked,
        Framing::UntilClose,
    ] {
        let server =
            TestServer::start(vec![Reply::ok(fixture(LATEST_SNAPSHOT)).framing(framing)]).await;

        let error = bounded(capped(&server, 1024).get(None))
            .await
            .expect_err("the body is over the cap");

        assert!(
            matches!(error, FetchError::TooLarge { limit: 1024, .. }),
            "{framing:?}: expected TooLarge, got {error:?}"
        );
    }
}

#[tokio::test]
async fn a_body_of_exactly_the_cap_is_accepted_and_one_byte_more_is_not() {
    for framing in [
        Framing::ContentLength,
        Framing::Chunked,
        Framing::UntilClose,
    ] {
        let at_cap = vec![b' '; 1024];
        let over_cap = vec![b' '; 1025];
        let server = TestServer::start(vec![
            Reply::ok(at_cap.clone()).framing(framing),
            Reply::ok(over_cap).framing(framing),
        ])
        .await;
        let fetcher = capped(&server, 1024);

        let (bytes, _) = body_of(
            bounded(fetcher.get(None))
                .await
                .unwrap_or_else(|e| panic!("{framing:?}: 1024 bytes fit: {e}")),
        );
        assert_eq!(bytes, at_cap);
        let error = bounded(fetcher.get(None))
            .await
            .expect_err("1025 bytes do not fit");
        assert!(
            matches!(error, FetchError::TooLarge { .. }),
            "{framing:?}: expected TooLarge, got {error:?}"
        );
    }
}

fn assert_timed_out(error: &FetchError, started: Instant) {
    match error {
        FetchError::Transport { source, .. } => {
            assert!(source.is_timeout(), "a timeout, got {source:?}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "gave up after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(vec![Reply::never_answer()]).await;
    let fetcher = Fetcher::new(FetchConfig {
        timeout: Duration::from_millis(500),
        ..server.config()
    })
    .expect("the test CA loads");

    let started = Instant::now();
    let error = bounded(fetcher.get(None))
        .await
        .expect_err("no answer is an error");

    assert_timed_out(&error, started);
    assert_eq!(server.requests().len(), 1, "the request was sent");
}

#[tokio::test]
async fn a_server_that_never_completes_the_handshake_times_out() {
    let (port, silent) = silent_listener().await;
    let fetcher = Fetcher::new(FetchConfig {
        url: format!("https://localhost:{port}/v2/pmv"),
        trusted_roots_pem: test_pki().ca_pem.into_bytes(),
        timeout: Duration::from_millis(500),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
    })
    .expect("the test CA loads");

    let started = Instant::now();
    let error = bounded(fetcher.get(None))
        .await
        .expect_err("no handshake is an error");
    silent.abort();

    assert_timed_out(&error, started);
}

// ---------------------------------------------------------------------------------------------
// The `catalog fetch` command

/// Runs the binary off the async threads, killing it if it outlives [`STEP_LIMIT`].
async fn run_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"))
            .args(&args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let deadline = Instant::now() + STEP_LIMIT;
        while child.try_wait().expect("the child can be polled").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("the output is collected")
    })
    .await
    .expect("the blocking task completes")
}

fn fetch_args(server: &TestServer, ca: &Path, out: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("a UTF-8 temporary path").to_string();
    vec![
        "catalog".into(),
        "fetch".into(),
        "--url".into(),
        server.url(),
        "--trusted-roots".into(),
        path(ca),
        "--out".into(),
        path(out),
    ]
}

fn write_ca(dir: &Path, server: &TestServer) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &server.ca_pem).expect("the CA PEM is written");
    path
}

#[tokio::test]
async fn cli_catalog_fetch_writes_the_file_and_keeps_it_on_an_empty_answer() {
    let snapshot = fixture(LATEST_SNAPSHOT);
    let server = TestServer::start(vec![
        Reply::ok(snapshot.clone()),
        Reply::ok(fixture(EMPTY_SNAPSHOT)),
    ])
    .await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = write_ca(dir.path(), &server);
    let out = dir.path().join("pmv.json");

    let first = run_cli(fetch_args(&server, &ca, &out)).await;
    assert!(
        first.status.success(),
        "the fetch succeeds: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        std::fs::read(&out).expect("the catalog is written"),
        snapshot
    );

    let second = run_cli(fetch_args(&server, &ca, &out)).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "an empty answer: {stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(
        std::fs::read(&out).expect("the catalog is still there"),
        snapshot,
        "the existing file is untouched"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests.iter().all(|r| r
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("ddm-update-operator/"))),
        "{requests:?}"
    );
}

#[tokio::test]
async fn cli_catalog_fetch_without_the_test_ca_fails_and_writes_nothing() {
    let server = TestServer::start(vec![Reply::ok(fixture(LATEST_SNAPSHOT))]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("pmv.json");
    let args = vec![
        "catalog".to_string(),
        "fetch".into(),
        "--url".into(),
        server.url(),
        "--out".into(),
        out.to_str().expect("a UTF-8 temporary path").into(),
    ];

    let output = run_cli(args).await;

    assert_eq!(
        output.status.code(),
        Some(2),
        "a transport failure: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!out.exists());
}
