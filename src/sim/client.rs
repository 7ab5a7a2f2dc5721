//! The HTTP side of a check-in as NanoMDM's `-dm` hand-off forwards it: `GET` or `PUT`
//! `<base><Endpoint>` with `X-Enrollment-ID`, optional HMAC signatures both ways.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

use super::SimError;

/// The header NanoMDM uses for HMAC signatures, on requests and on responses.
pub const SIGNATURE_HEADER: &str = "X-Hmac-Signature";
pub const ENROLLMENT_ID_HEADER: &str = "X-Enrollment-ID";
pub const ENROLLMENT_TYPE_HEADER: &str = "X-Enrollment-Type";

/// The largest response body read (real declaration bodies are a few KB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where the DDM server is and which keys sign the traffic.
#[derive(Clone)]
pub struct ServerConfig {
    base: Url,
    request_key: Option<Vec<u8>>,
    response_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("base", &self.base.as_str())
            .field("request_key", &self.request_key.as_ref().map(|_| "<set>"))
            .field("response_key", &self.response_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ServerConfig {
    /// The base URL endpoints are resolved against (`http://127.0.0.1:8080/ddm/`). NanoMDM's
    /// operations guide asks for a trailing slash; one is added when missing.
    pub fn new(base_url: &str) -> Result<Self, SimError> {
        let mut base = Url::parse(base_url)
            .map_err(|e| SimError::Config(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(SimError::Config(format!(
                "base URL {base_url:?}: expected an http(s) URL with a host"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        Ok(ServerConfig {
            base,
            request_key: None,
            response_key: None,
        })
    }

    /// Sign every request body with this key (NanoMDM's `-dm-send-hmac-key`).
    pub fn with_request_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.request_key = Some(key.into());
        self
    }

    /// Require every response to be signed with this key (NanoMDM's `-dm-recv-hmac-key`).
    pub fn with_response_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.response_key = Some(key.into());
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of an endpoint: `tokens`, `declaration-items`, `status`, or a declaration.
    pub(crate) fn url(&self, endpoint: &Endpoint<'_>) -> Result<Url, SimError> {
        let fail = |e: String| SimError::Config(format!("{}: {e}", endpoint.name()));
        match endpoint {
            Endpoint::Tokens => self.base.join("tokens").map_err(|e| fail(e.to_string())),
            Endpoint::DeclarationItems => self
                .base
                .join("declaration-items")
                .map_err(|e| fail(e.to_string())),
            Endpoint::Status => self.base.join("status").map_err(|e| fail(e.to_string())),
            Endpoint::Declaration {
                category,
                identifier,
            } => {
                let mut url = self.base.clone();
                url.path_segments_mut()
                    .map_err(|()| fail("the base URL cannot take a path".into()))?
                    .pop_if_empty()
                    .push("declaration")
                    .push(category)
                    .push(identifier);
                Ok(url)
            }
        }
    }
}

/// One DDM endpoint (the check-in's `Endpoint` value).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint<'a> {
    Tokens,
    DeclarationItems,
    Declaration {
        category: &'a str,
        identifier: &'a str,
    },
    Status,
}

impl Endpoint<'_> {
    pub(crate) fn name(&self) -> String {
        match self {
            Endpoint::Tokens => "tokens".into(),
            Endpoint::DeclarationItems => "declaration-items".into(),
            Endpoint::Status => "status".into(),
            Endpoint::Declaration {
                category,
                identifier,
            } => format!("declaration/{category}/{identifier}"),
        }
    }
}

/// `base64(HMAC-SHA256(key, body))`, as NanoMDM computes `X-Hmac-Signature`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Checks a base64 `X-Hmac-Signature` value in constant time.
pub fn verify_signature(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A client for simulated devices: no proxies, HTTP/1.1 keep-alive, the given timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, SimError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(1024)
        .user_agent(concat!("ddm-device-sim/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SimError::Config(format!("HTTP client: {e}")))
}

/// A read response.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub latency: Duration,
}

/// Sends one request for `enrollment_id` and reads the answer (signature checked when a
/// response key is configured, whatever the status).
pub(crate) async fn exchange(
    client: &reqwest::Client,
    server: &ServerConfig,
    enrollment_id: &str,
    endpoint: Endpoint<'_>,
    body: Option<Vec<u8>>,
) -> Result<Answer, SimError> {
    let url = server.url(&endpoint)?;
    let name = endpoint.name();
    let http = |source: reqwest::Error| SimError::Http {
        endpoint: name.clone(),
        source,
    };
    let signed_body: &[u8] = body.as_deref().unwrap_or_default();
    let signature = server.request_key.as_deref().map(|k| sign(k, signed_body));
    let mut request = match body {
        Some(body) => client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
        None => client.get(url),
    };
    request = request
        .header(ENROLLMENT_ID_HEADER, enrollment_id)
        .header(ENROLLMENT_TYPE_HEADER, "Device");
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let started = Instant::now();
    let mut response = request.send().await.map_err(http)?;
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(SimError::Protocol {
                endpoint: name,
                why: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let latency = started.elapsed();
    if let Some(key) = server.response_key.as_deref() {
        match header {
            None => {
                return Err(SimError::Signature {
                    endpoint: name,
                    why: "missing",
                });
            }
            Some(header) if !verify_signature(key, &bytes, &header) => {
                return Err(SimError::Signature {
                    endpoint: name,
                    why: "does not match the body",
                });
            }
            Some(_) => {}
        }
    }
    Ok(Answer {
        status,
        body: bytes,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_like_nanomdm() {
        let server = ServerConfig::new("http://127.0.0.1:8080/ddm").expect("valid");
        assert_eq!(server.base_url().as_str(), "http://127.0.0.1:8080/ddm/");
        let url = |e| server.url(&e).expect("url").to_string();
        assert_eq!(url(Endpoint::Tokens), "http://127.0.0.1:8080/ddm/tokens");
        assert_eq!(url(Endpoint::Status), "http://127.0.0.1:8080/ddm/status");
        assert_eq!(
            url(Endpoint::Declaration {
                category: "configuration",
                identifier: "com.example/odd id",
            }),
            "http://127.0.0.1:8080/ddm/declaration/configuration/com.example%2Fodd%20id"
        );
        assert!(ServerConfig::new("ftp://127.0.0.1/").is_err());
        assert!(ServerConfig::new("not a url").is_err());
    }

    #[test]
    fn signatures_round_trip() {
        // RFC 4231 test case 2.
        let signature = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(signature, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
        assert!(verify_signature(
            b"Jefe",
            b"what do ya want for nothing?",
            &signature
        ));
        assert!(!verify_signature(b"Jefe", b"other", &signature));
        assert!(!verify_signature(b"Jefe", b"", "not base64!"));
    }
}
