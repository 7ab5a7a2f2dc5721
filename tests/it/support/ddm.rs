//! The device side of the operator as it serves NanoMDM's `-dm` hand-off (DDM endpoints with
//! its HTTP limits) on loopback, over a store of its own, and NanoMDM's request signature.

use std::sync::Arc;

use base64::Engine as _;
use ddm_update_operator::backend::embedded::Embedded;
use ddm_update_operator::backend::store::Store;
use ddm_update_operator::clock::Clock;
use ddm_update_operator::http::{ddm, device_router, serve};
use ddm_update_operator::metrics::Metrics;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct DdmServer {
    /// `http://127.0.0.1:<port>/ddm/`.
    pub base: String,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// The store's clock (what the rate limit reads).
    pub clock: Clock,
    /// The SQLite file.
    pub path: std::path::PathBuf,
    /// The enrollments that reported (what the resolver loop would hear).
    pub reported: tokio::sync::mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

/// Requests are checked with `receive_key` and answers signed with `send_key` when given.
pub async fn ddm_server(
    receive_key: Option<&[u8]>,
    send_key: Option<&[u8]>,
    clock: Clock,
) -> DdmServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ddm.sqlite");
    let store = Arc::new(Store::open(&path).expect("store").with_clock(clock.clone()));
    let backend = Embedded::new(store.clone(), None);
    let (reported_tx, reported) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(ddm::DdmState {
        store: store.clone(),
        reports: backend.reports.clone(),
        receive_key: receive_key.map(<[u8]>::to_vec),
        send_key: send_key.map(<[u8]>::to_vec),
        bootstrap: ddm_update_operator::operator::bootstrap_declarations(),
        reported: reported_tx,
        metrics: metrics.clone(),
        claims: Default::default(),
    });
    let (address, task) = serve_device(device_router("/ddm/", state), metrics.clone()).await;
    DdmServer {
        base: format!("http://{address}/ddm/"),
        store,
        metrics,
        clock,
        path,
        reported,
        _dir: dir,
        _task: task,
    }
}

/// Serves `router` as the operator's device listener (its HTTP limits, `Side::Device`) on a
/// free loopback port until the test ends; the address and the serving task.
pub async fn serve_device(
    router: axum::Router,
    metrics: Arc<Metrics>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(serve::serve(
        listener,
        router,
        serve::Limits::local(),
        serve::Side::Device,
        metrics,
        std::future::pending(),
    ));
    (address, task)
}

/// NanoMDM's `X-Hmac-Signature`: base64 of HMAC-SHA256(key, body).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
