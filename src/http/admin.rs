//! Who may read the admin API (`/api/v1/*`: enrollment ids, serial numbers, device-supplied
//! failure text, the rollout ledger). A request carries `Authorization: Bearer <token>`:
//!
//! * Kubernetes mode: the token is checked with a TokenReview, then the user it names with a
//!   SubjectAccessReview for `get` on `updatepolicies/status` in `updates.ddm.dev` (in the
//!   watched namespace, or cluster-wide); decisions are cached briefly so a dashboard polling
//!   the API does not poll the API server.
//! * Standalone mode: the token in `--admin-token-file` (re-read when the file changes),
//!   compared in constant time; without a file the API is open, which `check_standalone`
//!   allows only on a loopback admin address.
//!
//! `/metrics`, `/healthz` and `/readyz` are not behind this.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The API group, resource and subresource a caller must be allowed to `get`.
pub const REVIEW_GROUP: &str = "updates.ddm.dev";
pub const REVIEW_RESOURCE: &str = "updatepolicies";
pub const REVIEW_SUBRESOURCE: &str = "status";
/// How long a Kubernetes decision (allowed, forbidden or unauthenticated) is reused.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(30);
/// Decisions kept at most (a flood of made-up tokens cannot grow the map past this).
pub const REVIEW_CACHE_ENTRIES: usize = 1024;

/// What one request's token amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one that names nobody: 401.
    Unauthenticated(&'static str),
    /// A known user without the right: 403.
    Forbidden(String),
    /// The token cannot be checked now (the API server unreachable, the token file gone): 503,
    /// never cached.
    Unavailable(&'static str),
}

/// Why the admin side cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    #[error(
        "--admin-listen {0} is not a loopback address and no --admin-token-file is given: the admin API (enrollment ids, serial numbers, device failure text) would be open to anyone who can reach it; give a token file or listen on 127.0.0.1"
    )]
    OpenOnNetwork(SocketAddr),
    #[error("--admin-token-file {path}: {why}")]
    TokenFile { path: String, why: String },
}

/// How the admin API authenticates.
pub enum AdminAuth {
    /// Standalone on a loopback admin address without a token file: whoever can connect.
    Open,
    /// Standalone: the token in a file.
    TokenFile(TokenFile),
    /// Kubernetes: TokenReview and SubjectAccessReview, cached.
    Reviewed(CachedReviews),
}

impl AdminAuth {
    /// Standalone mode's choice: the token file when given; else open, but only on loopback.
    pub fn standalone(
        admin_listen: SocketAddr,
        token_file: Option<&Path>,
    ) -> Result<AdminAuth, AdminSetupError> {
        match token_file {
            Some(path) => Ok(AdminAuth::TokenFile(TokenFile::open(path)?)),
            None if admin_listen.ip().is_loopback() => {
                tracing::warn!(
                    address = %admin_listen,
                    "the admin API (/api/v1) is served without authentication on this loopback address; give --admin-token-file to require a token"
                );
                Ok(AdminAuth::Open)
            }
            None => Err(AdminSetupError::OpenOnNetwork(admin_listen)),
        }
    }

    /// Kubernetes mode: reviews through the API server, `namespace` being the watched one.
    pub fn kubernetes(client: kube::Client, namespace: Option<String>) -> AdminAuth {
        AdminAuth::Reviewed(CachedReviews::new(Arc::new(KubeReviewer {
            client,
            namespace,
        })))
    }

    /// The verdict on a request's `Authorization` header.
    pub async fn check(&self, headers: &HeaderMap) -> Verdict {
        if let AdminAuth::Open = self {
            return Verdict::Allowed;
        }
        let Some(token) = bearer_token(headers) else {
            return Verdict::Unauthenticated("an Authorization: Bearer token is required");
        };
        match self {
            AdminAuth::Open => Verdict::Allowed,
            AdminAuth::TokenFile(file) => file.check(token),
            AdminAuth::Reviewed(reviews) => reviews.check(token, Instant::now()).await,
        }
    }
}

impl AdminAuth {
    /// What a request may see of the devices (`/api/v1/devices`): everything when the token may
    /// read UpdatePolicy status where the rest of the API requires; otherwise (Kubernetes mode)
    /// the devices governed by resources in those of `namespaces` where it may. `Err`: the
    /// verdict to answer with (no namespace at all: the first refusal).
    pub async fn scope(
        &self,
        headers: &HeaderMap,
        namespaces: &BTreeSet<String>,
    ) -> Result<crate::view::Scope, Verdict> {
        let verdict = self.check(headers).await;
        let (AdminAuth::Reviewed(reviews), Verdict::Forbidden(_)) = (self, &verdict) else {
            return match verdict {
                Verdict::Allowed => Ok(crate::view::Scope::All),
                refused => Err(refused),
            };
        };
        let Some(token) = bearer_token(headers) else {
            return Err(verdict);
        };
        let mut allowed = BTreeSet::new();
        for namespace in namespaces.iter().take(MAX_SCOPE_NAMESPACES) {
            match reviews.check_in(token, namespace, Instant::now()).await {
                Verdict::Allowed => {
                    allowed.insert(namespace.clone());
                }
                Verdict::Unavailable(why) => return Err(Verdict::Unavailable(why)),
                Verdict::Forbidden(_) | Verdict::Unauthenticated(_) => {}
            }
        }
        if allowed.is_empty() {
            Err(verdict)
        } else {
            Ok(crate::view::Scope::Namespaces(allowed))
        }
    }
}

/// Namespaces a token is checked in, at most, for one request's device scope.
pub const MAX_SCOPE_NAMESPACES: usize = 64;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The middleware in front of `/api/v1/*`.
pub async fn require_token(
    State(auth): State<Arc<AdminAuth>>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()).await {
        Verdict::Allowed => next.run(request).await,
        Verdict::Unauthenticated(why) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            format!("{why}\n"),
        )
            .into_response(),
        Verdict::Forbidden(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
        Verdict::Unavailable(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The standalone token: the file's content without surrounding whitespace, read again when
/// the file changes (a rotated Secret, an edited file).
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    /// Length, modification time and inode the token was read at.
    stamp: Option<(u64, i64, i64, u64)>,
    /// SHA-256 of the token; `None` when the file is unreadable or empty now.
    token: Option<[u8; 32]>,
}

fn stamp(path: &Path) -> Option<(u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()))
}

fn read_token(path: &Path) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("empty".into());
    }
    Ok(digest(token.as_bytes()))
}

impl TokenFile {
    /// Reads the token; an unreadable or empty file is an error (it would let nobody in, or
    /// match an empty token).
    pub fn open(path: &Path) -> Result<TokenFile, AdminSetupError> {
        let stamped = stamp(path);
        let token = read_token(path).map_err(|why| AdminSetupError::TokenFile {
            path: path.display().to_string(),
            why,
        })?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            state: Mutex::new(FileState {
                stamp: stamped,
                token: Some(token),
            }),
        })
    }

    fn check(&self, presented: &str) -> Verdict {
        let expected = {
            let mut state = match self.state.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = stamp(&self.path);
            if now != state.stamp {
                state.stamp = now;
                state.token = match read_token(&self.path) {
                    Ok(token) => Some(token),
                    Err(why) => {
                        tracing::error!(path = %self.path.display(), %why, "admin token file unusable; the admin API refuses every request until it is fixed");
                        None
                    }
                };
            }
            state.token
        };
        let Some(expected) = expected else {
            return Verdict::Unavailable("the admin token file cannot be read");
        };
        // Digests of equal length, compared in constant time: neither the token's length nor
        // a matching prefix shows in the answer's timing.
        if bool::from(digest(presented.as_bytes()).ct_eq(&expected)) {
            Verdict::Allowed
        } else {
            Verdict::Unauthenticated("the token is not valid")
        }
    }
}

/// Asks the cluster about one token: who it is (TokenReview) and whether they may read the
/// status (SubjectAccessReview).
pub trait Reviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict>;
    /// The same right in one namespace: what a token that may not read cluster-wide (or the
    /// watched namespace) may still see of the devices (`/api/v1/devices`).
    fn review_in<'a>(&'a self, token: &'a str, namespace: &'a str) -> BoxFuture<'a, Verdict>;
}

/// The Kubernetes API server as the reviewer.
pub struct KubeReviewer {
    client: kube::Client,
    /// The watched namespace: the right is checked there; `None`: cluster-wide.
    namespace: Option<String>,
}

impl Reviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict> {
        Box::pin(async move { Self::answer(self.ask(token, self.namespace.as_deref()).await) })
    }

    fn review_in<'a>(&'a self, token: &'a str, namespace: &'a str) -> BoxFuture<'a, Verdict> {
        Box::pin(async move { Self::answer(self.ask(token, Some(namespace)).await) })
    }
}

impl KubeReviewer {
    fn answer(asked: Result<Verdict, kube::Error>) -> Verdict {
        match asked {
            Ok(verdict) => verdict,
            Err(error) => {
                tracing::warn!(%error, "cannot review an admin API token");
                Verdict::Unavailable("cannot check the token with the Kubernetes API now")
            }
        }
    }

    /// Who the token is, and whether they may read UpdatePolicy status in `namespace`
    /// (cluster-wide when `None`).
    async fn ask(&self, token: &str, namespace: Option<&str>) -> Result<Verdict, kube::Error> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        use kube::api::{Api, PostParams};

        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Verdict::Unauthenticated("the token is not valid")),
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some(REVIEW_GROUP.into()),
                    resource: Some(REVIEW_RESOURCE.into()),
                    subresource: Some(REVIEW_SUBRESOURCE.into()),
                    verb: Some("get".into()),
                    namespace: namespace.map(str::to_string),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        let allowed = decided.status.is_some_and(|s| s.allowed);
        let username = user.username.unwrap_or_default();
        Ok(if allowed {
            Verdict::Allowed
        } else {
            Verdict::Forbidden(format!(
                "{username} may not get {REVIEW_RESOURCE}/{REVIEW_SUBRESOURCE} in {REVIEW_GROUP}{}",
                namespace.map_or(" cluster-wide".to_string(), |n| format!(
                    " in namespace {n}"
                ))
            ))
        })
    }
}

/// Decisions per token (by its SHA-256) for `REVIEW_CACHE_TTL`, at most
/// `REVIEW_CACHE_ENTRIES` of them.
pub struct CachedReviews {
    reviewer: Arc<dyn Reviewer>,
    entries: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

impl CachedReviews {
    pub fn new(reviewer: Arc<dyn Reviewer>) -> Self {
        Self::with_limits(reviewer, REVIEW_CACHE_TTL, REVIEW_CACHE_ENTRIES)
    }

    pub fn with_limits(reviewer: Arc<dyn Reviewer>, ttl: Duration, capacity: usize) -> Self {
        CachedReviews {
            reviewer,
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Verdict, Instant)>> {
        match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The verdict on `token` as of `now`: cached if decided less than the TTL ago.
    pub async fn check(&self, token: &str, now: Instant) -> Verdict {
        let key = digest(token.as_bytes());
        self.decide(key, now, || self.reviewer.review(token)).await
    }

    /// The cached decision under `key`, or `ask`'s (kept unless the API server was unavailable).
    async fn decide<'a>(
        &'a self,
        key: [u8; 32],
        now: Instant,
        ask: impl FnOnce() -> BoxFuture<'a, Verdict>,
    ) -> Verdict {
        if let Some((verdict, until)) = self.entries().get(&key)
            && now < *until
        {
            return verdict.clone();
        }
        let verdict = ask().await;
        if !matches!(verdict, Verdict::Unavailable(_)) {
            let mut entries = self.entries();
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                entries.retain(|_, (_, until)| now < *until);
                if entries.len() >= self.capacity {
                    // Still full of live decisions: drop the one that expires first.
                    if let Some(oldest) = entries
                        .iter()
                        .min_by_key(|(_, (_, until))| *until)
                        .map(|(k, _)| *k)
                    {
                        entries.remove(&oldest);
                    }
                }
            }
            entries.insert(key, (verdict.clone(), now + self.ttl));
        }
        verdict
    }

    /// The verdict on `token` in one namespace, cached as `check` is.
    pub async fn check_in(&self, token: &str, namespace: &str, now: Instant) -> Verdict {
        let key: [u8; 32] = Sha256::new()
            .chain_update(token.as_bytes())
            .chain_update([0u8])
            .chain_update(namespace.as_bytes())
            .finalize()
            .into();
        self.decide(key, now, || self.reviewer.review_in(token, namespace))
            .await
    }

    /// Decisions held now (for tests and figures).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Allows tokens starting with "ok", forbids "no…", fails on "down…"; counts its calls.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
    }

    impl Reviewer for Fake {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if token.starts_with("ok") {
                    Verdict::Allowed
                } else if token.starts_with("no") || token.starts_with("ns-") {
                    Verdict::Forbidden("no".into())
                } else if token.starts_with("down") {
                    Verdict::Unavailable("down")
                } else {
                    Verdict::Unauthenticated("the token is not valid")
                }
            })
        }

        /// "ns-<namespace>…" tokens may read that one namespace only.
        fn review_in<'a>(&'a self, token: &'a str, namespace: &'a str) -> BoxFuture<'a, Verdict> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if token.starts_with(&format!("ns-{namespace}")) || token.starts_with("ok") {
                    Verdict::Allowed
                } else {
                    Verdict::Forbidden("not there".into())
                }
            })
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn decisions_are_cached_for_the_ttl_and_failures_are_not() {
        let fake = Arc::new(Fake::default());
        let cache = CachedReviews::with_limits(fake.clone(), Duration::from_secs(30), 8);
        let t0 = Instant::now();
        assert_eq!(cache.check("ok-1", t0).await, Verdict::Allowed);
        assert_eq!(
            cache.check("ok-1", t0 + Duration::from_secs(29)).await,
            Verdict::Allowed
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "reused within 30 s");
        cache.check("ok-1", t0 + Duration::from_secs(30)).await;
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            2,
            "asked again after 30 s"
        );
        assert!(matches!(
            cache.check("no-1", t0).await,
            Verdict::Forbidden(_)
        ));
        cache.check("no-1", t0).await;
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            3,
            "a denial is cached too"
        );
        cache.check("down-1", t0).await;
        cache.check("down-1", t0).await;
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            5,
            "an unavailable API server is asked again"
        );
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound() {
        let fake = Arc::new(Fake::default());
        let cache = CachedReviews::with_limits(fake.clone(), Duration::from_secs(30), 4);
        let t0 = Instant::now();
        for i in 0..100u64 {
            cache
                .check(&format!("made-up-{i}"), t0 + Duration::from_millis(i))
                .await;
            assert!(cache.len() <= 4, "{} entries", cache.len());
        }
        // The newest decision is kept.
        let calls = fake.calls.load(Ordering::SeqCst);
        cache
            .check("made-up-99", t0 + Duration::from_millis(100))
            .await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
    }

    #[tokio::test]
    async fn a_token_allowed_in_some_namespaces_sees_those_only() {
        let fake = Arc::new(Fake::default());
        let auth = AdminAuth::Reviewed(CachedReviews::with_limits(
            fake.clone(),
            Duration::from_secs(30),
            64,
        ));
        let namespaces: BTreeSet<String> = ["fleet-a", "fleet-b"].map(String::from).into();
        assert_eq!(
            auth.scope(&headers("Bearer ok-1"), &namespaces).await,
            Ok(crate::view::Scope::All)
        );
        assert_eq!(
            auth.scope(&headers("Bearer ns-fleet-b-1"), &namespaces)
                .await,
            Ok(crate::view::Scope::Namespaces(
                ["fleet-b".to_string()].into()
            ))
        );
        // Allowed nowhere: the first refusal, and nothing of what exists.
        assert!(matches!(
            auth.scope(&headers("Bearer ns-elsewhere"), &namespaces)
                .await,
            Err(Verdict::Forbidden(_))
        ));
        assert!(matches!(
            auth.scope(&headers("Bearer made-up"), &namespaces).await,
            Err(Verdict::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.scope(&HeaderMap::new(), &namespaces).await,
            Err(Verdict::Unauthenticated(_))
        ));
        // Per-namespace decisions are cached like the others.
        let calls = fake.calls.load(Ordering::SeqCst);
        auth.scope(&headers("Bearer ns-fleet-b-1"), &namespaces)
            .await
            .ok();
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
    }

    #[test]
    fn a_token_file_is_compared_trimmed_and_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  first-token\n").expect("write");
        let file = TokenFile::open(&path).expect("opens");
        assert_eq!(file.check("first-token"), Verdict::Allowed);
        assert!(matches!(
            file.check("first-toke"),
            Verdict::Unauthenticated(_)
        ));
        assert!(matches!(
            file.check("first-token\n"),
            Verdict::Unauthenticated(_)
        ));
        // A rotated token (a new file moved into place, as a Secret update does).
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token-longer\n").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert!(matches!(
            file.check("first-token"),
            Verdict::Unauthenticated(_)
        ));
        assert_eq!(file.check("second-token-longer"), Verdict::Allowed);
        // Emptied: nobody gets in.
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            file.check("second-token-longer"),
            Verdict::Unavailable(_)
        ));
        assert!(matches!(file.check(""), Verdict::Unavailable(_)));
    }

    #[test]
    fn standalone_refuses_an_open_admin_api_off_loopback() {
        let open = |a: &str| AdminAuth::standalone(a.parse().expect("address"), None);
        assert!(matches!(open("127.0.0.1:9090"), Ok(AdminAuth::Open)));
        assert!(matches!(open("[::1]:9090"), Ok(AdminAuth::Open)));
        assert!(matches!(
            open("0.0.0.0:9090"),
            Err(AdminSetupError::OpenOnNetwork(_))
        ));
        assert!(matches!(
            open("10.1.2.3:9090"),
            Err(AdminSetupError::OpenOnNetwork(_))
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").expect("write");
        assert!(matches!(
            AdminAuth::standalone("0.0.0.0:9090".parse().expect("address"), Some(&empty)),
            Err(AdminSetupError::TokenFile { .. })
        ));
    }
}
