//! The HTTP trust boundary (issue 12, items 1 and 5): two listeners, the admin API behind a
//! bearer token, and server limits no client can outlast.
//!
//! * `each_side_serves_only_its_routes`: `/metrics`, `/readyz`, `/healthz` and `/api/v1/*` are
//!   404 on the device port; the DDM endpoints are 404 on the admin port.
//! * `the_admin_api_needs_the_token_from_the_file`: no token → 401, a wrong token → 401, the
//!   token in `--admin-token-file` → 200; a rotated file takes effect without a restart;
//!   `/metrics` and `/readyz` stay open.
//! * `an_open_admin_api_off_loopback_refuses_to_start`: in-process (`Engine::start`) and the
//!   binary (`run --admin-listen 0.0.0.0:0` exits 2 and says why).
//! * `half_sent_headers_are_cut_at_the_header_timeout`, `a_half_sent_body_gets_408_at_the_body_
//!   timeout`: raw TCP clients that stop half-way are disconnected within the limit (they were
//!   held past 45 s before).
//! * `the_connection_cap_closes_the_next_connection`: with a cap of 2, the third connection is
//!   closed on arrival and counted; once one closes, a new one is served.
//! * `sigterm_does_not_wait_past_the_drain_bound_for_a_slow_client`: the real binary, a client
//!   holding a request half-sent; after SIGTERM the process exits within the drain bound.
//! * `plan_fetches_the_ledger_with_its_token_file`: `plan --ledger <admin URL>` is refused 401
//!   without a token and reads the ledger with `--ledger-token-file`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddm_update_operator::http::serve::Limits;
use ddm_update_operator::operator::{CatalogSource, RunConfig};
use ddm_update_operator::run::Engine;

use crate::support::process::{KillOnDrop, free_ports, metric_sum};
use crate::support::{ROOT, copy_dir, examples};

const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const CATALOG: &str = "tests/fixtures/gdmf/pmv-2026-08-22.json";

/// An in-process operator on the examples, both listeners on loopback.
struct Running {
    device: SocketAddr,
    admin: SocketAddr,
    client: reqwest::Client,
    _work: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(work: &Path) -> RunConfig {
    let manifests = work.join("gitops");
    copy_dir(&examples().join("gitops"), &manifests);
    RunConfig::local(
        manifests,
        CatalogSource::File(Path::new(ROOT).join(CATALOG)),
        work,
    )
}

async fn start(change: impl FnOnce(&mut RunConfig, &Path)) -> Running {
    let work = tempfile::tempdir().expect("a temporary folder");
    let mut config = config(work.path());
    change(&mut config, work.path());
    let engine = Engine::start(config).await.expect("the operator starts");
    let device = engine.local_addr().expect("device address");
    let admin = engine.admin_addr().expect("admin address");
    let task = tokio::spawn(async move {
        let _ = engine.serve_until(std::future::pending()).await;
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let running = Running {
        device,
        admin,
        client,
        _work: work,
        task,
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if running.status(running.admin, "/readyz").await == 200 {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not ready within 30 s");
}

impl Running {
    async fn status(&self, at: SocketAddr, path: &str) -> u16 {
        self.client
            .get(format!("http://{at}{path}"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    async fn api(&self, token: Option<&str>) -> (u16, String) {
        let mut request = self
            .client
            .get(format!("http://{}/api/v1/status", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("an answer");
        let code = response.status().as_u16();
        (code, response.text().await.unwrap_or_default())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metric_sum(&text, name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_serves_only_its_routes() {
    let running = start(|_, _| {}).await;
    let (device, admin) = (running.device, running.admin);
    assert_ne!(device.port(), admin.port());
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/api/v1/status",
        "/api/v1/rollouts",
    ] {
        assert_eq!(
            running.status(device, path).await,
            404,
            "{path} on the device port"
        );
        assert_eq!(
            running.status(admin, path).await,
            200,
            "{path} on the admin port"
        );
    }
    // A device check-in: the DDM endpoints answer on the device port only.
    let tokens = |at: SocketAddr| {
        running
            .client
            .get(format!("http://{at}/ddm/tokens"))
            .header("X-Enrollment-ID", "SPLIT-1")
            .send()
    };
    assert_eq!(tokens(device).await.expect("device port").status(), 200);
    assert_eq!(tokens(admin).await.expect("admin port").status(), 404);
    let enroll = running
        .client
        .post(format!("http://{admin}/enroll"))
        .body("x")
        .send()
        .await
        .expect("admin port");
    assert_eq!(enroll.status(), 404, "/enroll is not on the admin port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_from_the_file() {
    let running = start(|config, work| {
        let token = work.join("admin-token");
        std::fs::write(&token, "s3cret-admin-token\n").expect("write the token");
        config.admin_token_file = Some(token);
    })
    .await;
    let (code, body) = running.api(None).await;
    assert_eq!(code, 401, "no token: {body}");
    assert!(body.contains("Bearer"), "{body}");
    let (code, body) = running.api(Some("s3cret-admin-tokeN")).await;
    assert_eq!(code, 401, "a wrong token: {body}");
    let (code, body) = running.api(Some("s3cret-admin-token")).await;
    assert_eq!(code, 200, "the right token: {body}");
    assert!(body.contains("\"ready\""), "{body}");
    let rollouts = running
        .client
        .get(format!("http://{}/api/v1/rollouts", running.admin))
        .send()
        .await
        .expect("an answer");
    assert_eq!(rollouts.status(), 401, "the ledger is behind the token too");
    // Open without a token on the admin port: metrics and the probes.
    assert_eq!(running.status(running.admin, "/metrics").await, 200);
    assert_eq!(running.status(running.admin, "/readyz").await, 200);
    assert_eq!(running.status(running.admin, "/healthz").await, 200);

    // Rotated (a new file moved into place, as a Secret update does): the next request reads it.
    let token = running._work.path().join("admin-token");
    let next = running._work.path().join("admin-token.new");
    std::fs::write(&next, "rotated-token").expect("write");
    std::fs::rename(&next, &token).expect("rename");
    assert_eq!(running.api(Some("s3cret-admin-token")).await.0, 401);
    assert_eq!(running.api(Some("rotated-token")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_admin_api_off_loopback_refuses_to_start() {
    let work = tempfile::tempdir().expect("a temporary folder");
    let mut open = config(work.path());
    open.admin_listen = "0.0.0.0:0".parse().expect("address");
    let refused = Engine::start(open).await.err().expect("refused");
    let why = refused.to_string();
    assert!(
        why.contains("--admin-listen") && why.contains("--admin-token-file"),
        "{why}"
    );

    // The binary: exit 2 with the reason, before binding anything.
    let output = Command::new(BINARY)
        .args(["run", "--manifests"])
        .arg(work.path().join("gitops"))
        .args(["--catalog", &format!("{ROOT}/{CATALOG}")])
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a loopback address") && stderr.contains("--admin-token-file"),
        "{stderr}"
    );
    // With a token file it starts (checked in-process: the same Engine::start).
    let token = work.path().join("token");
    std::fs::write(&token, "t").expect("write");
    let mut guarded = config(&work.path().join("second"));
    guarded.admin_listen = "0.0.0.0:0".parse().expect("address");
    guarded.admin_token_file = Some(token);
    assert!(Engine::start(guarded).await.is_ok());
}

/// A raw connection to `at`; reads until the server closes it, at most `cap`. What arrived and
/// when the close came (`None`: still open at the cap).
fn read_until_closed(stream: &mut TcpStream, cap: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < cap {
        match stream.read(&mut buffer) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Reset by the server: closed too.
            Err(_) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                );
            }
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), None)
}

fn short_limits(config: &mut RunConfig) {
    config.http = Limits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..Limits::local()
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_at_the_header_timeout() {
    let running = start(|config, _| short_limits(config)).await;
    for (side, at) in [("device", running.device), ("admin", running.admin)] {
        let address = at;
        let (received, closed) = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(address).expect("connect");
            stream
                .write_all(b"GET /ddm/tokens HTTP/1.1\r\nHost: operator\r\nX-Enrollment-ID: SLOW")
                .expect("half the headers");
            read_until_closed(&mut stream, Duration::from_secs(10))
        })
        .await
        .expect("the client");
        let closed = closed.unwrap_or_else(|| panic!("{side}: still open after 10 s"));
        eprintln!("[http_limits] {side}: half-sent headers cut after {closed:?}");
        assert!(
            closed < Duration::from_secs(3),
            "{side}: closed after {closed:?}, the header timeout is 1 s"
        );
        assert!(!received.contains("200"), "{side}: {received}");
    }
    assert!(
        running
            .metric("ddm_update_operator_http_timeouts_total")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_gets_408_at_the_body_timeout() {
    let running = start(|config, _| short_limits(config)).await;
    let address = running.device;
    let (received, closed) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream
            .write_all(
                b"PUT /ddm/status HTTP/1.1\r\nHost: operator\r\nX-Enrollment-ID: SLOW-BODY\r\n\
                  Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"StatusItems\":",
            )
            .expect("the headers and a little of the body");
        read_until_closed(&mut stream, Duration::from_secs(10))
    })
    .await
    .expect("the client");
    let closed = closed.expect("closed within 10 s");
    eprintln!("[http_limits] half-sent body: 408 and closed after {closed:?}");
    assert!(
        received.starts_with("HTTP/1.1 408"),
        "a 408 answer: {received:?}"
    );
    assert!(
        received.to_ascii_lowercase().contains("connection: close"),
        "{received}"
    );
    assert!(
        closed < Duration::from_secs(3),
        "closed after {closed:?}, the body timeout is 1 s"
    );
    let text = running
        .client
        .get(format!("http://{}/metrics", running.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(
            r#"ddm_update_operator_http_timeouts_total{listener="device",phase="body"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_the_next_connection() {
    let running = start(|config, _| {
        config.http = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
            ..Limits::local()
        };
    })
    .await;
    let address = running.device;
    let outcome = tokio::task::spawn_blocking(move || {
        let first = TcpStream::connect(address).expect("first");
        let second = TcpStream::connect(address).expect("second");
        // Give the server a moment to accept both before the third arrives.
        std::thread::sleep(Duration::from_millis(300));
        let mut third = TcpStream::connect(address).expect("the kernel completes the handshake");
        let (_, closed) = read_until_closed(&mut third, Duration::from_secs(5));
        drop(first);
        std::thread::sleep(Duration::from_millis(300));
        // Room again: a request on a new connection is answered.
        let mut fourth = TcpStream::connect(address).expect("fourth");
        fourth
            .write_all(b"GET /ddm/tokens HTTP/1.1\r\nHost: operator\r\nX-Enrollment-ID: CAP\r\nConnection: close\r\n\r\n")
            .expect("a request");
        let (answer, _) = read_until_closed(&mut fourth, Duration::from_secs(5));
        drop(second);
        (closed, answer)
    })
    .await
    .expect("the clients");
    let (closed, answer) = outcome;
    let closed = closed.expect("the third connection is closed");
    eprintln!("[http_limits] connection over the cap closed after {closed:?}");
    assert!(closed < Duration::from_secs(1), "closed after {closed:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let text = running
        .client
        .get(format!("http://{}/metrics", running.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"ddm_update_operator_http_connections_refused_total{listener="device"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_past_the_drain_bound_for_a_slow_client() {
    let work = tempfile::tempdir().expect("a temporary folder");
    let [device_port, admin_port] = free_ports();
    let child = Command::new(BINARY)
        .args(["run", "--manifests", &format!("{ROOT}/examples/gitops")])
        .args(["--catalog", &format!("{ROOT}/{CATALOG}")])
        .arg("--data-dir")
        .arg(work.path())
        .args(["--listen", &format!("127.0.0.1:{device_port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        // Only the drain bound can end the slow request.
        .args(["--http-body-timeout", "120s", "--http-drain-timeout", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the operator starts");
    let mut child = KillOnDrop(child);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut slow = TcpStream::connect(("127.0.0.1", device_port)).expect("connect");
    slow.write_all(
        b"PUT /ddm/status HTTP/1.1\r\nHost: operator\r\nX-Enrollment-ID: SLOW\r\nContent-Length: 4000\r\n\r\n{",
    )
    .expect("a request half-sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if signalled.elapsed() > Duration::from_secs(15) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    eprintln!("[http_limits] exited {took:?} after SIGTERM (drain bound 2 s)");
    let status = exited.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM; the drain bound is 2 s"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the slow request was given the drain time first ({took:?})"
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_fetches_the_ledger_with_its_token_file() {
    let running = start(|config, work| {
        let token = work.join("admin-token");
        std::fs::write(&token, "ledger-reader-token\n").expect("write the token");
        config.admin_token_file = Some(token);
    })
    .await;
    let url = format!("http://{}/api/v1/rollouts", running.admin);
    let plan = move |token_file: Option<&Path>| {
        let mut command = Command::new(BINARY);
        command
            .args(["plan", "-f"])
            .arg(examples().join("gitops"))
            .arg("--inventory")
            .arg(examples().join("inventory.yaml"))
            .args(["--catalog", &format!("{ROOT}/{CATALOG}")])
            .args(["--ledger", &url, "--output", "json"]);
        if let Some(file) = token_file {
            command.arg("--ledger-token-file").arg(file);
        }
        command.output().expect("plan runs")
    };
    let refused = tokio::task::spawn_blocking({
        let plan = plan.clone();
        move || plan(None)
    })
    .await
    .expect("plan");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let token = running._work.path().join("admin-token");
    let fetched = tokio::task::spawn_blocking(move || plan(Some(&token)))
        .await
        .expect("plan");
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
}
