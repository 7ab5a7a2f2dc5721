//! Fetching the catalog from Apple: a reqwest client that trusts only the configured roots
//! (Apple Root CA by default; gdmf does not chain to a WebPKI root), conditional requests by
//! ETag, Retry-After, a timeout and a body cap; and the last good copy kept on disk so that a
//! refused or failed fetch never leaves the operator without a catalog.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::guard::{self, Suspicious};
use super::model::{ParseError, PmvDocument};

/// Apple's Software Lookup Service.
pub const DEFAULT_URL: &str = "https://gdmf.apple.com/v2/pmv";

/// Apple Root CA (2006–2035), the root gdmf.apple.com chains to.
pub const APPLE_ROOT_CA_PEM: &[u8] = include_bytes!("apple-root-ca.pem");

/// The largest body accepted; real answers are 100–200 KB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How to reach the catalog.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub url: String,
    /// PEM bundle of the only roots trusted for the catalog host.
    pub trusted_roots_pem: Vec<u8>,
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            url: DEFAULT_URL.to_string(),
            trusted_roots_pem: APPLE_ROOT_CA_PEM.to_vec(),
            timeout: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Why a fetch produced no usable catalog.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the trusted roots could not be loaded: {0}")]
    Roots(String),
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{url}: the body exceeds {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: {source}")]
    Parse {
        url: String,
        #[source]
        source: ParseError,
    },
    #[error("{url}: refused: {reason}; the last good catalog stays in use")]
    Refused { url: String, reason: Suspicious },
    #[error("{url}: the server asked to wait until {until}")]
    Deferred { url: String, until: Timestamp },
    #[error("{url} answered 304 Not Modified to a request that named no cached copy")]
    UnexpectedNotModified { url: String },
    #[error("last good catalog at {path}: {why}")]
    Store { path: PathBuf, why: String },
}

impl FetchError {
    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A body the server sent, with its validator.
#[derive(Debug)]
pub enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    NotModified,
}

/// An HTTP client for the catalog.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: FetchConfig,
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Result<Self, FetchError> {
        let roots = reqwest::Certificate::from_pem_bundle(&config.trusted_roots_pem)
            .map_err(|e| FetchError::Roots(e.to_string()))?;
        if roots.is_empty() {
            return Err(FetchError::Roots("no certificate in the PEM bundle".into()));
        }
        let client = reqwest::Client::builder()
            .tls_certs_only(roots)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION"),
                " (+declarative software updates)"
            ))
            .timeout(config.timeout)
            // Only the configured roots are trusted, so never follow a redirect off HTTPS.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() != "https" {
                    attempt.error("refusing a redirect away from https")
                } else if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            }))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| FetchError::Roots(e.to_string()))?;
        Ok(Fetcher { client, config })
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// One GET, conditional on `etag` when given.
    pub async fn get(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let url = &self.config.url;
        let transport = |source| FetchError::Transport {
            url: url.clone(),
            source,
        };
        let mut request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Timestamp::now()));
            return Err(FetchError::Status {
                url: url.clone(),
                status: status.as_u16(),
                retry_after,
            });
        }
        let limit = self.config.max_body_bytes;
        let too_large = || FetchError::TooLarge {
            url: url.clone(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body { bytes, etag })
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(7 * 24 * 3600)));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = when.duration_since(now);
    Some(Duration::from_secs(
        u64::try_from(wait.as_secs())
            .unwrap_or(0)
            .min(7 * 24 * 3600),
    ))
}

/// What is kept about the last good catalog, next to its bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheMeta {
    pub url: String,
    pub etag: Option<String>,
    pub fetched_at: Option<Timestamp>,
    /// The latest refusal or failure, kept until a good answer replaces it.
    pub last_problem: Option<String>,
    /// Do not ask the server again before this time (from `Retry-After`).
    pub not_before: Option<Timestamp>,
}

/// The last good catalog on disk: `pmv.json` (the body exactly as received) and
/// `pmv.meta.json`. Each file is replaced atomically.
#[derive(Debug, Clone)]
pub struct LastGood {
    dir: PathBuf,
}

impl LastGood {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LastGood { dir: dir.into() }
    }

    pub fn body_path(&self) -> PathBuf {
        self.dir.join("pmv.json")
    }

    fn holds_path(&self) -> PathBuf {
        self.dir.join("held.json")
    }

    /// What the finer guard holds (`super::holdover`). A missing file is nothing held; a
    /// damaged one is a warning and nothing held (never a crash).
    pub fn load_holds(&self) -> super::holdover::Holds {
        let path = self.holds_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "held catalog releases unreadable; nothing is held");
                Default::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "held catalog releases unreadable; nothing is held");
                Default::default()
            }
        }
    }

    pub fn save_holds(&self, holds: &super::holdover::Holds) -> Result<(), FetchError> {
        let path = self.holds_path();
        let bytes = serde_json::to_vec_pretty(holds).map_err(|e| self.store_error(&path, e))?;
        self.write_atomically(&path, &bytes)
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("pmv.meta.json")
    }

    fn store_error(&self, path: &Path, why: impl ToString) -> FetchError {
        FetchError::Store {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }

    /// The stored body and its parsed document, if there is one.
    pub fn load(&self) -> Result<Option<(Vec<u8>, PmvDocument)>, FetchError> {
        let path = self.body_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.store_error(&path, e)),
        };
        let document = PmvDocument::from_slice(&bytes).map_err(|e| self.store_error(&path, e))?;
        Ok(Some((bytes, document)))
    }

    pub fn meta(&self) -> CacheMeta {
        std::fs::read(self.meta_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_meta(&self, meta: &CacheMeta) -> Result<(), FetchError> {
        let bytes =
            serde_json::to_vec_pretty(meta).map_err(|e| self.store_error(&self.meta_path(), e))?;
        self.write_atomically(&self.meta_path(), &bytes)
    }

    pub fn save_body(&self, bytes: &[u8]) -> Result<(), FetchError> {
        self.write_atomically(&self.body_path(), bytes)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir).map_err(|e| self.store_error(&self.dir, e))?;
        let temp = path.with_extension("tmp");
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        result.map_err(|e| self.store_error(path, e))
    }
}

/// The result of one refresh.
#[derive(Debug)]
pub enum Refresh {
    /// A new catalog was accepted and stored.
    Updated(Box<PmvDocument>),
    /// The server said nothing changed.
    NotModified,
}

/// Fetches, parses and checks a new catalog against the last good one; stores it only when it
/// passes. On any failure the stored copy is untouched and the problem is recorded in its
/// metadata (and returned).
pub async fn refresh(fetcher: &Fetcher, store: &LastGood) -> Result<Refresh, FetchError> {
    let mut meta = store.meta();
    let now = Timestamp::now();
    if let Some(until) = meta.not_before.filter(|t| *t > now) {
        return Err(FetchError::Deferred {
            url: fetcher.url().to_string(),
            until,
        });
    }
    // A damaged stored copy must not block the fetch that can repair it.
    let previous = match store.load() {
        Ok(previous) => previous,
        Err(error) => {
            tracing::warn!(%error, "ignoring the damaged last good catalog");
            None
        }
    };
    // Only revalidate by ETag when the stored copy came from the same URL.
    let etag = match (&previous, meta.url == fetcher.url()) {
        (Some(_), true) => meta.etag.clone(),
        _ => None,
    };
    let outcome = fetch_checked(fetcher, etag.as_deref(), previous.as_ref().map(|(_, d)| d)).await;
    match outcome {
        Ok(Some((bytes, etag, document))) => {
            store.save_body(&bytes)?;
            meta = CacheMeta {
                url: fetcher.url().to_string(),
                etag,
                fetched_at: Some(now),
                last_problem: None,
                not_before: None,
            };
            store.save_meta(&meta)?;
            Ok(Refresh::Updated(Box::new(document)))
        }
        Ok(None) => {
            meta.fetched_at = Some(now);
            meta.last_problem = None;
            meta.not_before = None;
            store.save_meta(&meta)?;
            Ok(Refresh::NotModified)
        }
        Err(error) => {
            meta.last_problem = Some(error.to_string());
            meta.not_before = error
                .retry_after()
                .and_then(|d| jiff::SignedDuration::try_from(d).ok())
                .and_then(|d| now.checked_add(d).ok());
            store.save_meta(&meta)?;
            Err(error)
        }
    }
}

type Accepted = Option<(Vec<u8>, Option<String>, PmvDocument)>;

async fn fetch_checked(
    fetcher: &Fetcher,
    etag: Option<&str>,
    previous: Option<&PmvDocument>,
) -> Result<Accepted, FetchError> {
    let url = || fetcher.url().to_string();
    match fetcher.get(etag).await? {
        Fetched::NotModified if etag.is_some() && previous.is_some() => Ok(None),
        Fetched::NotModified => Err(FetchError::UnexpectedNotModified { url: url() }),
        Fetched::Body { bytes, etag } => {
            let document = PmvDocument::from_slice(&bytes)
                .map_err(|source| FetchError::Parse { url: url(), source })?;
            let verdict = match previous {
                Some(previous) => guard::check_replacement(previous, &document),
                None => guard::check_not_empty(&document),
            };
            verdict.map_err(|reason| FetchError::Refused { url: url(), reason })?;
            Ok(Some((bytes, etag, document)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_http_dates() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().expect("valid");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 12:05:00 GMT", now),
            Some(Duration::from_secs(300))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_embedded_root_is_apple_root_ca() {
        let roots = reqwest::Certificate::from_pem_bundle(APPLE_ROOT_CA_PEM).expect("valid PEM");
        assert_eq!(roots.len(), 1);
        let text = std::str::from_utf8(APPLE_ROOT_CA_PEM).expect("ascii");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
