//! NanoMDM's API replies, read per enrollment id. `/v1/enqueue` and `/v1/push` both answer an
//! `APIResult` (nanomdm api/types.go): `{"status":{ID:{"push_error","push_result",
//! "command_error"}},"no_push","push_error","command_error","command_uuid","request_type"}`,
//! empty fields omitted, with 200 (all ok), 207 (some ids failed) or 500 (a top-level error, or
//! every id failed). NanoMDM enqueues first and pushes after, so a `push_error` means the command
//! *is* queued, only the wake-up failed; a `command_error` means it is not (and then no push is
//! tried). Pure: no IO.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What one enqueue did for one enrollment id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// In the device's queue, and pushed (or `nopush` was asked for).
    Queued,
    /// In the device's queue, but the APNs push failed: push again, never enqueue again.
    QueuedNotPushed { push_error: String },
    /// Not queued: enqueue again.
    NotQueued { command_error: String },
}

impl Enqueued {
    pub fn is_queued(&self) -> bool {
        !matches!(self, Enqueued::NotQueued { .. })
    }
}

/// What one push did for one enrollment id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Ok,
    Failed { push_error: String },
}

/// A reply that is not one NanoMDM's API gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("HTTP {0} is not an API result status (200, 207, 500)")]
    Status(u16),
    #[error("the body is not NanoMDM's API result JSON")]
    NotJson,
    #[error("HTTP {0} but the body names no failure, so which ids failed is unknown")]
    NoFailureNamed(u16),
}

#[derive(Debug, Default, Deserialize)]
struct ApiResult {
    #[serde(default)]
    status: BTreeMap<String, IdResult>,
    #[serde(default)]
    push_error: Option<String>,
    #[serde(default)]
    command_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct IdResult {
    #[serde(default)]
    push_error: Option<String>,
    #[serde(default)]
    command_error: Option<String>,
}

impl ApiResult {
    fn parse(http_status: u16, body: &[u8]) -> Result<Self, ReplyError> {
        if !matches!(http_status, 200 | 207 | 500) {
            return Err(ReplyError::Status(http_status));
        }
        let result: ApiResult = serde_json::from_slice(body).map_err(|_| ReplyError::NotJson)?;
        let failed = result.push_error.is_some()
            || result.command_error.is_some()
            || result
                .status
                .values()
                .any(|r| r.push_error.is_some() || r.command_error.is_some());
        // A 207 or 500 that names no failure cannot be read per id.
        if http_status != 200 && !failed {
            return Err(ReplyError::NoFailureNamed(http_status));
        }
        Ok(result)
    }
}

/// Reads an `/v1/enqueue/{ids}` reply for the `ids` asked for. An id the reply does not mention
/// is queued unless a top-level error says otherwise (NanoMDM lists only ids with something to
/// say: a failure, or a push id).
pub fn parse_enqueue(
    http_status: u16,
    body: &[u8],
    ids: &[String],
) -> Result<BTreeMap<String, Enqueued>, ReplyError> {
    let result = ApiResult::parse(http_status, body)?;
    let outcome = |id: &String| {
        // A top-level command_error: nothing was queued, and no push was tried.
        if let Some(error) = &result.command_error {
            return Enqueued::NotQueued {
                command_error: error.clone(),
            };
        }
        let own = result.status.get(id);
        if let Some(error) = own.and_then(|r| r.command_error.as_ref()) {
            return Enqueued::NotQueued {
                command_error: error.clone(),
            };
        }
        match own
            .and_then(|r| r.push_error.as_ref())
            .or(result.push_error.as_ref())
        {
            Some(error) => Enqueued::QueuedNotPushed {
                push_error: error.clone(),
            },
            None => Enqueued::Queued,
        }
    };
    Ok(ids.iter().map(|id| (id.clone(), outcome(id))).collect())
}

/// Reads a `/v1/push/{ids}` reply for the `ids` asked for.
pub fn parse_push(
    http_status: u16,
    body: &[u8],
    ids: &[String],
) -> Result<BTreeMap<String, Pushed>, ReplyError> {
    let result = ApiResult::parse(http_status, body)?;
    Ok(ids
        .iter()
        .map(|id| {
            let error = result
                .status
                .get(id)
                .and_then(|r| r.push_error.as_ref())
                .or(result.push_error.as_ref());
            let outcome = match error {
                Some(error) => Pushed::Failed {
                    push_error: error.clone(),
                },
                None => Pushed::Ok,
            };
            (id.clone(), outcome)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    // The replies seen from NanoMDM v0.9.0-14 (../shared/nanomdm/README.md, transcript).
    const NOPUSH_OK: &str =
        r#"{"no_push": true,"command_uuid": "cmd-0001","request_type": "DeclarativeManagement"}"#;
    const NO_PUSH_CERT: &str = r#"{"push_error": "retrieving push cert for topic \"com.apple.mgmt.External.e0bd\": key not found","command_uuid": "cmd-0002","request_type": "DeclarativeManagement"}"#;
    const PUSH_NO_CERT: &str = r#"{"push_error": "retrieving push cert for topic \"com.apple.mgmt.External.e0bd\": key not found"}"#;

    #[test]
    fn a_queued_command_without_push_is_queued() {
        let got = parse_enqueue(200, NOPUSH_OK.as_bytes(), &ids(&["A"])).expect("reply");
        assert_eq!(got["A"], Enqueued::Queued);
    }

    #[test]
    fn a_push_error_means_queued_but_not_pushed() {
        // 500 with push_error: the command is in the queue all the same.
        let got = parse_enqueue(500, NO_PUSH_CERT.as_bytes(), &ids(&["A", "B"])).expect("reply");
        for id in ["A", "B"] {
            assert!(
                matches!(&got[id], Enqueued::QueuedNotPushed { push_error } if push_error.contains("push cert")),
                "{got:?}"
            );
        }
        let pushed = parse_push(500, PUSH_NO_CERT.as_bytes(), &ids(&["A"])).expect("reply");
        assert!(matches!(pushed["A"], Pushed::Failed { .. }));
    }

    #[test]
    fn a_command_error_means_not_queued() {
        let body = r#"{"command_error":"decoding command: plist: error parsing"}"#;
        let got = parse_enqueue(500, body.as_bytes(), &ids(&["A"])).expect("reply");
        assert_eq!(
            got["A"],
            Enqueued::NotQueued {
                command_error: "decoding command: plist: error parsing".into()
            }
        );
    }

    #[test]
    fn a_multi_status_is_read_per_id() {
        // 207: A's push failed (queued), B's enqueue failed (not queued, though a push was
        // tried for it too), C pushed.
        let body = "{\n\t\"status\": {\n\t\t\"A\": {\n\t\t\t\"push_error\": \"BadDeviceToken\"\n\t\t},\n\t\t\"B\": {\n\t\t\t\"push_result\": \"apns-2\",\n\t\t\t\"command_error\": \"enrollment not found\"\n\t\t},\n\t\t\"C\": {\n\t\t\t\"push_result\": \"apns-3\"\n\t\t}\n\t},\n\t\"command_uuid\": \"X\",\n\t\"request_type\": \"DeclarativeManagement\"\n}";
        let got = parse_enqueue(207, body.as_bytes(), &ids(&["A", "B", "C"])).expect("reply");
        assert_eq!(
            got["A"],
            Enqueued::QueuedNotPushed {
                push_error: "BadDeviceToken".into()
            }
        );
        assert!(!got["B"].is_queued());
        assert_eq!(got["C"], Enqueued::Queued);
        let pushed = parse_push(207, body.as_bytes(), &ids(&["A", "C"])).expect("reply");
        assert_eq!(pushed["C"], Pushed::Ok);
        assert!(matches!(pushed["A"], Pushed::Failed { .. }));
    }

    #[test]
    fn malformed_replies_are_errors() {
        let one = ids(&["A"]);
        assert_eq!(
            parse_enqueue(200, b"<html>ok</html>", &one),
            Err(ReplyError::NotJson)
        );
        assert_eq!(parse_enqueue(500, b"", &one), Err(ReplyError::NotJson));
        assert_eq!(
            parse_enqueue(500, b"{}", &one),
            Err(ReplyError::NoFailureNamed(500))
        );
        assert_eq!(
            parse_enqueue(207, NOPUSH_OK.as_bytes(), &one),
            Err(ReplyError::NoFailureNamed(207))
        );
        assert_eq!(
            parse_enqueue(404, b"404 page not found", &one),
            Err(ReplyError::Status(404))
        );
        assert_eq!(
            parse_enqueue(200, br#"{"status":{"A":{"push_error":7}}}"#, &one),
            Err(ReplyError::NotJson)
        );
        assert_eq!(parse_push(200, b"[1,2]", &one), Err(ReplyError::NotJson));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        const ALPHABET: &[u8] = b"{}[]\":,status push_error command_error A 0 null true";
        let one = ids(&["A"]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for length in 0..400 {
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ALPHABET[(seed % ALPHABET.len() as u64) as usize]
                })
                .collect();
            for code in [200, 207, 500] {
                let _ = parse_enqueue(code, &bytes, &one);
                let _ = parse_push(code, &bytes, &one);
            }
        }
    }
}
