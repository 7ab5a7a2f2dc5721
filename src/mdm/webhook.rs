//! NanoMDM's `-webhook-url` events, parsed (service/webhook/event.go at 1d5fcf4): a JSON object
//! `{"topic", "created_at" (RFC 3339 nano), "event_id", "checkin_event" | "acknowledge_event"}`
//! whose `raw_payload` is base64 of the device's whole check-in or command-report plist. Pure:
//! bytes in, a [`Parsed`] out, never a panic. Everything is bounded: the JSON by the caller's
//! body cap, strings by length, the plist by an event budget, a nesting depth and a byte budget
//! (a binary plist can share one object many times: each use counts).

use std::borrow::Cow;
use std::io::Cursor;

use base64::Engine as _;
use jiff::Timestamp;
use plist::stream::{Event, Reader};
use serde::Deserialize;

use super::command_results::{CommandReport, ReportError, parse_report};

/// At most this many plist elements in one `raw_payload`: check-ins are flat dictionaries of
/// about a dozen keys; command reports (DeviceInformation, SecurityInfo) a few hundred.
pub const MAX_PLIST_EVENTS: usize = 16_384;
/// At most this much nesting in one `raw_payload`.
pub const MAX_PLIST_DEPTH: usize = 16;
/// At most this many bytes of strings and data in one decoded `raw_payload`, shared objects
/// counted at each use.
pub const MAX_PLIST_BYTES: usize = 1024 * 1024;
/// Longest enrollment id, UDID or event id taken (UDIDs are 25–40 characters; the DDM
/// endpoints take the same bound for `X-Enrollment-ID`).
pub const MAX_ID: usize = 256;
/// Longest fact string kept (serial, model identifier, OS version, build).
pub const MAX_FACT: usize = 64;

/// The check-in topics NanoMDM sends (event.go) and `mdm.Connect`, its command-report topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Authenticate,
    TokenUpdate,
    CheckOut,
    UserAuthenticate,
    SetBootstrapToken,
    GetBootstrapToken,
    DeclarativeManagement,
    GetToken,
    Connect,
}

impl Topic {
    pub const ALL: [Topic; 9] = [
        Topic::Authenticate,
        Topic::TokenUpdate,
        Topic::CheckOut,
        Topic::UserAuthenticate,
        Topic::SetBootstrapToken,
        Topic::GetBootstrapToken,
        Topic::DeclarativeManagement,
        Topic::GetToken,
        Topic::Connect,
    ];

    /// NanoMDM's name, such as `mdm.Authenticate` (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Authenticate => "mdm.Authenticate",
            Topic::TokenUpdate => "mdm.TokenUpdate",
            Topic::CheckOut => "mdm.CheckOut",
            Topic::UserAuthenticate => "mdm.UserAuthenticate",
            Topic::SetBootstrapToken => "mdm.SetBootstrapToken",
            Topic::GetBootstrapToken => "mdm.GetBootstrapToken",
            Topic::DeclarativeManagement => "mdm.DeclarativeManagement",
            Topic::GetToken => "mdm.GetToken",
            Topic::Connect => "mdm.Connect",
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// NanoMDM's `ids`: the enrollment as its storage names it (mdm/type.go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// The device's UDID, the EnrollmentID of a User Enrollment, or `UDID:UserID` for a user
    /// channel.
    pub id: String,
    /// `Device`, `User`, `User Enrollment (Device)`, `User Enrollment`, `Shared iPad`.
    pub kind: String,
    /// Set on user channels: the device channel's id.
    pub parent_id: Option<String>,
}

/// What the device said, as far as the operator reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `mdm.Authenticate`, with Apple's Authenticate check-in keys.
    Authenticate(Identity),
    /// `mdm.TokenUpdate`: the enrollment is complete (`token_update_tally` 1 the first time).
    TokenUpdate { tally: Option<i64> },
    /// `mdm.CheckOut`: the device left the MDM.
    CheckOut,
    /// `mdm.SetBootstrapToken`: `escrowed` when the plist carries a non-empty `BootstrapToken`
    /// (absent or empty: the device removed it, and the MDM should forget it).
    SetBootstrapToken { escrowed: bool },
    /// `mdm.Connect`: a command report (`Idle` included), read once here: the device's facts
    /// (`MdmDevice::apply`) and the command's answer (`nanomdm_commands::answered`) both come
    /// from `report`.
    Acknowledge {
        /// `Acknowledged`, `Error`, `CommandFormatError`, `NotNow` or `Idle`.
        status: String,
        command_uuid: Option<String>,
        /// The answer to one of the operator's commands (`Ok(None)`: Idle or another
        /// command's); `Err`: a plist whose keys could not be read as a report (counted and
        /// otherwise ignored).
        report: Result<Option<CommandReport>, ReportError>,
    },
}

/// What Apple's Authenticate check-in says about the device (each optional: a User Enrollment
/// sends no UDID nor serial).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub udid: Option<String>,
    pub serial_number: Option<String>,
    /// `ProductName`: the model identifier, such as `iPhone15,2` or `Mac14,2`.
    pub product_name: Option<String>,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
}

/// One device-channel event the operator reads.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub topic: Topic,
    /// When NanoMDM handled the message: the time of every fact the event carries.
    pub created_at: Timestamp,
    /// NanoMDM's trace id of the request.
    pub event_id: String,
    pub ids: Ids,
    pub udid: Option<String>,
    pub enrollment_id: Option<String>,
    /// The decoded `raw_payload`.
    pub payload: Vec<u8>,
    pub message: Message,
}

impl WebhookEvent {
    /// The enrollment the event is about (`ids.id`).
    pub fn enrollment(&self) -> &str {
        &self.ids.id
    }
}

/// Why a well-formed event is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A user channel (`parent_id` set, or type `User`, `User Enrollment`, `Shared iPad`): the
    /// operator manages devices.
    UserChannel,
    /// A topic NanoMDM did not document at 1d5fcf4.
    UnknownTopic,
    /// A known topic that tells nothing about the device (`mdm.DeclarativeManagement`,
    /// `mdm.GetBootstrapToken`, `mdm.UserAuthenticate`, `mdm.GetToken`).
    NoDeviceFacts,
}

impl Ignored {
    pub fn reason(self) -> &'static str {
        match self {
            Ignored::UserChannel => "user_channel",
            Ignored::UnknownTopic => "unknown_topic",
            Ignored::NoDeviceFacts => "no_device_facts",
        }
    }
}

/// A parsed body.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Event(Box<WebhookEvent>),
    /// Well formed, not applied (counted by topic label: a known topic's name, or `unknown`).
    Ignored {
        topic: &'static str,
        why: Ignored,
    },
}

/// Why a body is not a NanoMDM event (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is not a NanoMDM webhook event: {0}")]
    Json(String),
    #[error("created_at {0:?} is not an RFC 3339 time")]
    Time(String),
    #[error("{field} is missing or empty")]
    Missing { field: &'static str },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{topic} carries no {wanted}")]
    WrongKind {
        topic: &'static str,
        wanted: &'static str,
    },
    #[error("raw_payload is not base64: {0}")]
    Base64(String),
    #[error("raw_payload is not a plist: {0}")]
    Plist(String),
    #[error("raw_payload exceeds a bound: {0}")]
    Bomb(String),
    #[error("raw_payload key {key}: {why}")]
    Field { key: String, why: String },
}

impl WebhookError {
    /// The fixed reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WebhookError::Json(_) => "json",
            WebhookError::Time(_) => "time",
            WebhookError::Missing { .. } | WebhookError::TooLong { .. } => "field",
            WebhookError::WrongKind { .. } => "kind",
            WebhookError::Base64(_) => "base64",
            WebhookError::Plist(_) | WebhookError::Field { .. } => "plist",
            WebhookError::Bomb(_) => "plist_bound",
        }
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    created_at: Cow<'a, str>,
    #[serde(default, borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    checkin_event: Option<RawInner<'a>>,
    #[serde(default, borrow)]
    acknowledge_event: Option<RawInner<'a>>,
}

/// `checkin_event` and `acknowledge_event` share these fields; `status` and `command_uuid` are
/// the acknowledge event's, `token_update_tally` the TokenUpdate check-in's.
#[derive(Deserialize)]
struct RawInner<'a> {
    #[serde(borrow)]
    ids: RawIds<'a>,
    #[serde(default, borrow)]
    udid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    enrollment_id: Option<Cow<'a, str>>,
    /// Go's `[]byte`: base64 (standard, padded), or `null` when empty.
    #[serde(default, borrow)]
    raw_payload: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    command_uuid: Option<Cow<'a, str>>,
    #[serde(default)]
    token_update_tally: Option<i64>,
}

#[derive(Deserialize)]
struct RawIds<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    parent_id: Option<Cow<'a, str>>,
}

/// NanoMDM's enrollment types of user channels (mdm/type.go:30-45).
const USER_CHANNEL_TYPES: [&str; 3] = ["User", "User Enrollment", "Shared iPad"];

fn bounded(
    value: Option<Cow<'_, str>>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, WebhookError> {
    match value {
        Some(v) if v.chars().count() > max => Err(WebhookError::TooLong { field, max }),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => Ok(Some(v.into_owned())),
        None => Ok(None),
    }
}

fn required(
    value: Option<Cow<'_, str>>,
    field: &'static str,
    max: usize,
) -> Result<String, WebhookError> {
    bounded(value, field, max)?.ok_or(WebhookError::Missing { field })
}

/// Parses one webhook body (the caller caps its size).
pub fn parse(body: &[u8]) -> Result<Parsed, WebhookError> {
    let raw: RawEvent<'_> =
        serde_json::from_slice(body).map_err(|e| WebhookError::Json(e.to_string()))?;
    let Some(topic) = Topic::from_name(&raw.topic) else {
        return Ok(Parsed::Ignored {
            topic: "unknown",
            why: Ignored::UnknownTopic,
        });
    };
    let name = topic.as_str();
    let inner = match (topic, raw.checkin_event, raw.acknowledge_event) {
        (Topic::Connect, _, Some(ack)) => ack,
        (Topic::Connect, _, None) => {
            return Err(WebhookError::WrongKind {
                topic: name,
                wanted: "acknowledge_event",
            });
        }
        (_, Some(checkin), _) => checkin,
        (_, None, _) => {
            return Err(WebhookError::WrongKind {
                topic: name,
                wanted: "checkin_event",
            });
        }
    };
    let created_at = raw
        .created_at
        .parse::<Timestamp>()
        .map_err(|_| WebhookError::Time(raw.created_at.chars().take(64).collect()))?;
    let ids = Ids {
        id: required(Some(inner.ids.id), "ids.id", MAX_ID)?,
        kind: required(Some(inner.ids.kind), "ids.type", MAX_ID)?,
        parent_id: bounded(inner.ids.parent_id, "ids.parent_id", MAX_ID)?,
    };
    if ids.parent_id.is_some() || USER_CHANNEL_TYPES.contains(&ids.kind.as_str()) {
        return Ok(Parsed::Ignored {
            topic: name,
            why: Ignored::UserChannel,
        });
    }
    if matches!(
        topic,
        Topic::DeclarativeManagement
            | Topic::GetBootstrapToken
            | Topic::UserAuthenticate
            | Topic::GetToken
    ) {
        return Ok(Parsed::Ignored {
            topic: name,
            why: Ignored::NoDeviceFacts,
        });
    }
    let event_id = bounded(raw.event_id, "event_id", MAX_ID)?.unwrap_or_default();
    let udid = bounded(inner.udid, "udid", MAX_ID)?;
    let enrollment_id = bounded(inner.enrollment_id, "enrollment_id", MAX_ID)?;
    let payload = match inner.raw_payload {
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text.trim().as_bytes())
            .map_err(|e| WebhookError::Base64(e.to_string()))?,
        None => Vec::new(),
    };
    if payload.is_empty() {
        return Err(WebhookError::Missing {
            field: "raw_payload",
        });
    }
    if topic == Topic::Connect {
        // A command report is read once, within the same bounds as a check-in.
        let report = match parse_report(&payload) {
            Err(ReportError::TooLarge) => {
                return Err(WebhookError::Bomb(ReportError::TooLarge.to_string()));
            }
            Err(error) if error.unreadable() => return Err(WebhookError::Plist(error.to_string())),
            read => read,
        };
        let message = Message::Acknowledge {
            status: required(inner.status, "status", MAX_FACT)?,
            command_uuid: bounded(inner.command_uuid, "command_uuid", MAX_ID)?,
            report,
        };
        return Ok(Parsed::Event(Box::new(WebhookEvent {
            topic,
            created_at,
            event_id,
            ids,
            udid,
            enrollment_id,
            payload,
            message,
        })));
    }
    let plist = read_dictionary(&payload)?;
    let message = match topic {
        Topic::Authenticate => Message::Authenticate(Identity {
            udid: fact_text(&plist, "UDID", MAX_ID)?,
            serial_number: fact_text(&plist, "SerialNumber", MAX_FACT)?,
            product_name: fact_text(&plist, "ProductName", MAX_FACT)?,
            os_version: fact_text(&plist, "OSVersion", MAX_FACT)?,
            build_version: fact_text(&plist, "BuildVersion", MAX_FACT)?,
        }),
        Topic::TokenUpdate => Message::TokenUpdate {
            tally: inner.token_update_tally,
        },
        Topic::CheckOut => Message::CheckOut,
        Topic::SetBootstrapToken => Message::SetBootstrapToken {
            escrowed: match plist.get("BootstrapToken") {
                None => false,
                Some(plist::Value::Data(token)) => !token.is_empty(),
                Some(_) => {
                    return Err(WebhookError::Field {
                        key: "BootstrapToken".into(),
                        why: "not data".into(),
                    });
                }
            },
        },
        // Returned above: an event of its own, or ignored.
        Topic::Connect
        | Topic::DeclarativeManagement
        | Topic::GetBootstrapToken
        | Topic::UserAuthenticate
        | Topic::GetToken => {
            return Ok(Parsed::Ignored {
                topic: name,
                why: Ignored::NoDeviceFacts,
            });
        }
    };
    Ok(Parsed::Event(Box::new(WebhookEvent {
        topic,
        created_at,
        event_id,
        ids,
        udid,
        enrollment_id,
        payload,
        message,
    })))
}

/// A string key of the check-in, bounded; absent or empty: `None`.
fn fact_text(
    plist: &plist::Dictionary,
    key: &str,
    max: usize,
) -> Result<Option<String>, WebhookError> {
    match plist.get(key) {
        None => Ok(None),
        Some(plist::Value::String(s)) if s.chars().count() > max => Err(WebhookError::Field {
            key: key.into(),
            why: format!("longer than {max} characters"),
        }),
        Some(plist::Value::String(s)) if s.is_empty() => Ok(None),
        Some(plist::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WebhookError::Field {
            key: key.into(),
            why: "not a string".into(),
        }),
    }
}

/// Reads an XML or binary plist whose top level is a dictionary, from the plist crate's event
/// stream within [`MAX_PLIST_EVENTS`], [`MAX_PLIST_DEPTH`] and [`MAX_PLIST_BYTES`].
pub fn read_dictionary(bytes: &[u8]) -> Result<plist::Dictionary, WebhookError> {
    let mut events = Reader::new(Cursor::new(bytes));
    let mut budget = Budget {
        events: MAX_PLIST_EVENTS,
        bytes: MAX_PLIST_BYTES,
    };
    let mut next = move || -> Result<Option<Event<'static>>, WebhookError> {
        if budget.events == 0 {
            return Err(WebhookError::Bomb(format!(
                "more than {MAX_PLIST_EVENTS} plist elements"
            )));
        }
        budget.events -= 1;
        let event = events
            .next()
            .transpose()
            .map_err(|e| WebhookError::Plist(e.to_string()))?;
        let size = match &event {
            Some(Event::String(s)) => s.len(),
            Some(Event::Data(d)) => d.len(),
            _ => 0,
        };
        budget.bytes = budget.bytes.checked_sub(size).ok_or_else(|| {
            WebhookError::Bomb(format!(
                "more than {MAX_PLIST_BYTES} bytes of strings and data"
            ))
        })?;
        Ok(event)
    };
    let top = match next()? {
        Some(Event::StartDictionary(_)) => read_collection(true, &mut next, 1)?,
        Some(_) => {
            return Err(WebhookError::Plist(
                "the top level is not a dictionary".into(),
            ));
        }
        None => return Err(WebhookError::Plist("empty plist".into())),
    };
    if next()?.is_some() {
        return Err(WebhookError::Plist("data after the top dictionary".into()));
    }
    match top {
        plist::Value::Dictionary(dictionary) => Ok(dictionary),
        _ => Err(WebhookError::Plist(
            "the top level is not a dictionary".into(),
        )),
    }
}

struct Budget {
    events: usize,
    bytes: usize,
}

/// Reads one collection's contents up to its end (its start event already read). Recursion is
/// bounded by [`MAX_PLIST_DEPTH`].
fn read_collection(
    dictionary: bool,
    next: &mut impl FnMut() -> Result<Option<Event<'static>>, WebhookError>,
    depth: usize,
) -> Result<plist::Value, WebhookError> {
    if depth > MAX_PLIST_DEPTH {
        return Err(WebhookError::Bomb(format!(
            "nested deeper than {MAX_PLIST_DEPTH} levels"
        )));
    }
    let mut map = plist::Dictionary::new();
    let mut list = Vec::new();
    loop {
        let key = if dictionary {
            match next()? {
                Some(Event::EndCollection) => break,
                Some(Event::String(key)) => Some(key.into_owned()),
                Some(_) => {
                    return Err(WebhookError::Plist(
                        "a dictionary key is not a string".into(),
                    ));
                }
                None => return Err(WebhookError::Plist("a dictionary is not closed".into())),
            }
        } else {
            None
        };
        let value = match next()? {
            Some(Event::EndCollection) if !dictionary => break,
            Some(Event::EndCollection) => {
                return Err(WebhookError::Plist("a dictionary key has no value".into()));
            }
            Some(Event::StartDictionary(_)) => read_collection(true, next, depth + 1)?,
            Some(Event::StartArray(_)) => read_collection(false, next, depth + 1)?,
            Some(Event::Boolean(b)) => plist::Value::Boolean(b),
            Some(Event::Data(d)) => plist::Value::Data(d.into_owned()),
            Some(Event::Date(d)) => plist::Value::Date(d),
            Some(Event::Integer(i)) => plist::Value::Integer(i),
            Some(Event::Real(r)) => plist::Value::Real(r),
            Some(Event::String(s)) => plist::Value::String(s.into_owned()),
            Some(Event::Uid(u)) => plist::Value::Uid(u),
            Some(_) => return Err(WebhookError::Plist("an unknown plist element".into())),
            None => return Err(WebhookError::Plist("a collection is not closed".into())),
        };
        match key {
            Some(key) => {
                map.insert(key, value);
            }
            None => list.push(value),
        }
    }
    Ok(if dictionary {
        plist::Value::Dictionary(map)
    } else {
        plist::Value::Array(list)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(body: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>{body}</dict></plist>"#
        )
        .into_bytes()
    }

    fn event(topic: &str, kind: &str, inner: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "topic": topic,
            "created_at": "2026-12-07T11:14:52.86478793Z",
            "event_id": "15dd6ab21ebb0082",
            kind: inner,
        }))
        .expect("json")
    }

    fn checkin(topic: &str, plist: &[u8]) -> Vec<u8> {
        event(
            topic,
            "checkin_event",
            serde_json::json!({
                "ids": {"id": "11111111-2222-3333-4444-555555555555", "type": "Device"},
                "udid": "11111111-2222-3333-4444-555555555555",
                "raw_payload": base64::engine::general_purpose::STANDARD.encode(plist),
            }),
        )
    }

    #[test]
    fn authenticate_yields_apples_identity_keys() {
        let plist = xml("<key>MessageType</key><string>Authenticate</string>\
            <key>Topic</key><string>com.apple.mgmt.External.e0bd</string>\
            <key>UDID</key><string>11111111-2222-3333-4444-555555555555</string>\
            <key>SerialNumber</key><string>C02XK1ABCD12</string>\
            <key>ProductName</key><string>Mac14,2</string>\
            <key>OSVersion</key><string>15.6</string>\
            <key>BuildVersion</key><string>24G84</string>");
        let Parsed::Event(event) = parse(&checkin("mdm.Authenticate", &plist)).expect("parses")
        else {
            panic!("an event");
        };
        assert_eq!(event.topic, Topic::Authenticate);
        assert_eq!(event.created_at.subsec_nanosecond(), 864_787_930);
        assert_eq!(
            event.message,
            Message::Authenticate(Identity {
                udid: Some("11111111-2222-3333-4444-555555555555".into()),
                serial_number: Some("C02XK1ABCD12".into()),
                product_name: Some("Mac14,2".into()),
                os_version: Some("15.6".into()),
                build_version: Some("24G84".into()),
            })
        );
        assert_eq!(event.payload, plist);
    }

    #[test]
    fn bootstrap_token_escrowed_only_with_non_empty_data() {
        for (body, escrowed) in [
            ("<key>BootstrapToken</key><data>c2VjcmV0</data>", true),
            ("<key>BootstrapToken</key><data></data>", false),
            ("", false),
        ] {
            let plist = xml(&format!(
                "<key>MessageType</key><string>SetBootstrapToken</string>{body}"
            ));
            let Parsed::Event(event) =
                parse(&checkin("mdm.SetBootstrapToken", &plist)).expect("ok")
            else {
                panic!("an event");
            };
            assert_eq!(
                event.message,
                Message::SetBootstrapToken { escrowed },
                "{body}"
            );
        }
    }

    #[test]
    fn user_channels_and_unknown_topics_are_ignored() {
        let plist = xml("<key>MessageType</key><string>TokenUpdate</string>");
        let user = event(
            "mdm.TokenUpdate",
            "checkin_event",
            serde_json::json!({
                "ids": {"id": "U:501", "type": "User", "parent_id": "U"},
                "raw_payload": base64::engine::general_purpose::STANDARD.encode(&plist),
            }),
        );
        assert_eq!(
            parse(&user),
            Ok(Parsed::Ignored {
                topic: "mdm.TokenUpdate",
                why: Ignored::UserChannel
            })
        );
        assert_eq!(
            parse(&checkin("mdm.Reticulate", &plist)),
            Ok(Parsed::Ignored {
                topic: "unknown",
                why: Ignored::UnknownTopic
            })
        );
    }

    #[test]
    fn a_binary_plist_sharing_one_string_is_refused_by_the_byte_budget() {
        // One 4 KiB string referenced 4,096 times (the binary writer stores it once): a reader
        // expanding it would hold 16 MiB from a payload of a few KiB.
        let mut plist = plist::Dictionary::new();
        plist.insert("MessageType".into(), "CheckOut".into());
        let shared = plist::Value::String("x".repeat(4 * 1024));
        let row = plist::Value::Array(vec![shared; 64]);
        plist.insert("Bomb".into(), plist::Value::Array(vec![row; 64]));
        let mut bytes = Vec::new();
        plist::Value::Dictionary(plist)
            .to_writer_binary(&mut bytes)
            .expect("binary");
        assert!(bytes.len() < 64 * 1024, "a bomb: {} bytes", bytes.len());
        let error = parse(&checkin("mdm.CheckOut", &bytes)).expect_err("refused");
        assert_eq!(error.reason(), "plist_bound", "{error}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(parse(b"{").expect_err("json").reason(), "json");
        assert_eq!(parse(b"[]").expect_err("json").reason(), "json");
        let not_base64 = event(
            "mdm.CheckOut",
            "checkin_event",
            serde_json::json!({"ids": {"id": "A", "type": "Device"}, "raw_payload": "%%%"}),
        );
        assert_eq!(parse(&not_base64).expect_err("b64").reason(), "base64");
        assert_eq!(
            parse(&checkin("mdm.CheckOut", b"not a plist"))
                .expect_err("plist")
                .reason(),
            "plist"
        );
        let deep = format!(
            "{}{}",
            "<array>".repeat(MAX_PLIST_DEPTH + 1),
            "</array>".repeat(MAX_PLIST_DEPTH + 1)
        );
        let deep = xml(&format!("<key>Deep</key>{deep}"));
        assert_eq!(
            parse(&checkin("mdm.CheckOut", &deep))
                .expect_err("deep")
                .reason(),
            "plist_bound"
        );
    }
}
