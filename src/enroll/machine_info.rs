//! MachineInfo, the plist a device posts when Setup Assistant fetches the enrollment profile
//! (Apple's `other/machineinfo.yaml`). Read from the plist crate's event stream with a budget,
//! so a plist bomb (a binary plist sharing one object a million times) costs nothing.

use std::io::Cursor;

use plist::stream::{Event, Reader};

use super::EnrollError;

/// At most this many plist events: MachineInfo is a flat dictionary of about fifteen keys.
const MAX_EVENTS: usize = 4_096;
/// At most this much nesting below the top dictionary (unknown keys may hold containers).
const MAX_DEPTH: usize = 16;
/// Longest string value kept.
const MAX_STRING: usize = 256;

/// What the gate reads from MachineInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    pub udid: Option<String>,
    pub serial: String,
    /// Product type, such as `iPhone17,1` or `Mac16,1`.
    pub product: String,
    /// Build, such as `23B85`.
    pub build: String,
    /// `OS_VERSION`, sent from iOS 17 / macOS 14.
    pub os_version: Option<String>,
    pub supplemental_build: Option<String>,
    /// Such as `(a)`.
    pub supplemental_extra: Option<String>,
    pub language: Option<String>,
    /// `MDM_CAN_REQUEST_SOFTWARE_UPDATE`: the device can be told to update during setup.
    pub can_request_update: bool,
    /// `SOFTWARE_UPDATE_DEVICE_ID`: the catalog id (a board id such as `J414sAP` for Macs).
    pub software_update_device_id: Option<String>,
}

/// Parses an XML or binary plist MachineInfo.
pub fn parse(bytes: &[u8]) -> Result<MachineInfo, EnrollError> {
    let mut events = Reader::new(Cursor::new(bytes));
    let mut budget = MAX_EVENTS;
    let mut next = move || -> Result<Option<Event<'static>>, EnrollError> {
        if budget == 0 {
            return Err(EnrollError::Plist(format!(
                "more than {MAX_EVENTS} plist elements; MachineInfo is a small dictionary"
            )));
        }
        budget -= 1;
        events
            .next()
            .transpose()
            .map_err(|e| EnrollError::Plist(e.to_string()))
    };
    match next()? {
        Some(Event::StartDictionary(_)) => {}
        Some(_) => {
            return Err(EnrollError::Plist(
                "the top level is not a dictionary".into(),
            ));
        }
        None => return Err(EnrollError::Plist("empty plist".into())),
    }
    let mut info = MachineInfo::default();
    let (mut serial, mut product, mut build) = (None, None, None);
    loop {
        let key = match next()? {
            Some(Event::EndCollection) => break,
            Some(Event::String(key)) => key.into_owned(),
            Some(_) => {
                return Err(EnrollError::Plist(
                    "a dictionary key is not a string".into(),
                ));
            }
            None => return Err(EnrollError::Plist("the dictionary is not closed".into())),
        };
        let value = match next()? {
            Some(event) => event,
            None => return Err(EnrollError::Plist(format!("{key} has no value"))),
        };
        let text = |value: Event<'static>| -> Result<String, EnrollError> {
            match value {
                Event::String(s) if s.len() <= MAX_STRING => Ok(s.into_owned()),
                Event::String(_) => Err(EnrollError::Field {
                    key: key.clone(),
                    why: format!("longer than {MAX_STRING} characters"),
                }),
                other => Err(EnrollError::Field {
                    key: key.clone(),
                    why: format!("expected a string, found {}", kind(&other)),
                }),
            }
        };
        match key.as_str() {
            "UDID" => info.udid = Some(text(value)?),
            "SERIAL" => serial = Some(text(value)?),
            "PRODUCT" => product = Some(text(value)?),
            "VERSION" => build = Some(text(value)?),
            "OS_VERSION" => info.os_version = Some(text(value)?),
            "SUPPLEMENTAL_BUILD_VERSION" => info.supplemental_build = Some(text(value)?),
            "SUPPLEMENTAL_OS_VERSION_EXTRA" => info.supplemental_extra = Some(text(value)?),
            "LANGUAGE" => info.language = Some(text(value)?),
            "SOFTWARE_UPDATE_DEVICE_ID" => info.software_update_device_id = Some(text(value)?),
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE" => {
                info.can_request_update = match value {
                    Event::Boolean(b) => b,
                    other => {
                        return Err(EnrollError::Field {
                            key,
                            why: format!("expected a boolean, found {}", kind(&other)),
                        });
                    }
                }
            }
            // Keys the gate does not need (IMEI, MEID, PAIRING_TOKEN, newer ones): skipped,
            // containers included, within the budget.
            _ => skip(value, &mut next)?,
        }
    }
    if next()?.is_some() {
        return Err(EnrollError::Plist("data after the top dictionary".into()));
    }
    let required = |value: Option<String>, key: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| EnrollError::Field {
                key: key.into(),
                why: "required and missing".into(),
            })
    };
    info.serial = required(serial, "SERIAL")?;
    info.product = required(product, "PRODUCT")?;
    info.build = required(build, "VERSION")?;
    Ok(info)
}

/// Skips one value; containers are walked to their end (bounded by depth and the budget).
fn skip(
    first: Event<'static>,
    next: &mut impl FnMut() -> Result<Option<Event<'static>>, EnrollError>,
) -> Result<(), EnrollError> {
    let mut depth = match first {
        Event::StartArray(_) | Event::StartDictionary(_) => 1usize,
        _ => return Ok(()),
    };
    while depth > 0 {
        match next()? {
            Some(Event::StartArray(_) | Event::StartDictionary(_)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(EnrollError::Plist(format!(
                        "nested deeper than {MAX_DEPTH} levels"
                    )));
                }
            }
            Some(Event::EndCollection) => depth -= 1,
            Some(_) => {}
            None => return Err(EnrollError::Plist("a collection is not closed".into())),
        }
    }
    Ok(())
}

fn kind(event: &Event<'_>) -> &'static str {
    match event {
        Event::StartArray(_) => "an array",
        Event::StartDictionary(_) => "a dictionary",
        Event::EndCollection => "the end of a collection",
        Event::Boolean(_) => "a boolean",
        Event::Data(_) => "data",
        Event::Date(_) => "a date",
        Event::Integer(_) => "an integer",
        Event::Real(_) => "a real",
        Event::String(_) => "a string",
        Event::Uid(_) => "a uid",
        _ => "an unknown element",
    }
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

    const BASE: &str = "<key>UDID</key><string>00008110-000A1C2E3E08801E</string>\
        <key>SERIAL</key><string>F2LXK1ABCD</string>\
        <key>PRODUCT</key><string>iPhone15,2</string>\
        <key>VERSION</key><string>22G86</string>\
        <key>OS_VERSION</key><string>18.6</string>\
        <key>LANGUAGE</key><string>de</string>";

    #[test]
    fn reads_the_keys_the_gate_needs_and_skips_the_rest() {
        let body = format!(
            "{BASE}<key>MDM_CAN_REQUEST_SOFTWARE_UPDATE</key><true/>\
             <key>SOFTWARE_UPDATE_DEVICE_ID</key><string>iPhone15,2</string>\
             <key>PAIRING_TOKEN</key><data>AAEC</data>\
             <key>FUTURE</key><dict><key>a</key><array><integer>1</integer></array></dict>\
             <key>IMEI</key><string>35 000000 000000 0</string>"
        );
        let info = parse(&xml(&body)).expect("valid MachineInfo");
        assert_eq!(info.serial, "F2LXK1ABCD");
        assert_eq!(info.product, "iPhone15,2");
        assert_eq!(info.build, "22G86");
        assert_eq!(info.os_version.as_deref(), Some("18.6"));
        assert_eq!(info.language.as_deref(), Some("de"));
        assert!(info.can_request_update);
        assert_eq!(
            info.software_update_device_id.as_deref(),
            Some("iPhone15,2")
        );
    }

    #[test]
    fn the_update_flag_defaults_to_false() {
        let info = parse(&xml(BASE)).expect("valid MachineInfo");
        assert!(!info.can_request_update);
    }

    #[test]
    fn binary_plists_read_the_same() {
        let mut dict = plist::Dictionary::new();
        for (k, v) in [
            ("UDID", "u"),
            ("SERIAL", "C02XYZ"),
            ("PRODUCT", "Mac16,1"),
            ("VERSION", "25B78"),
            ("OS_VERSION", "26.1"),
            ("SOFTWARE_UPDATE_DEVICE_ID", "J604AP"),
        ] {
            dict.insert(k.into(), plist::Value::String(v.into()));
        }
        dict.insert(
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE".into(),
            plist::Value::Boolean(true),
        );
        let mut bytes = Vec::new();
        plist::Value::Dictionary(dict)
            .to_writer_binary(&mut bytes)
            .expect("binary plist");
        let info = parse(&bytes).expect("valid binary MachineInfo");
        assert_eq!(info.product, "Mac16,1");
        assert_eq!(info.software_update_device_id.as_deref(), Some("J604AP"));
        assert!(info.can_request_update);
    }

    #[test]
    fn wrong_types_and_missing_keys_name_the_key() {
        let wrong = xml(&format!(
            "{BASE}<key>MDM_CAN_REQUEST_SOFTWARE_UPDATE</key><string>yes</string>"
        ));
        assert_eq!(
            parse(&wrong).map_err(|e| e.to_string()),
            Err("MDM_CAN_REQUEST_SOFTWARE_UPDATE: expected a boolean, found a string".into())
        );
        let serial_number = xml("<key>SERIAL</key><integer>7</integer>");
        assert!(
            parse(&serial_number)
                .map_err(|e| e.to_string())
                .is_err_and(|e| e.contains("SERIAL: expected a string, found an integer"))
        );
        let missing = xml("<key>SERIAL</key><string>X</string>");
        assert!(
            parse(&missing)
                .map_err(|e| e.to_string())
                .is_err_and(|e| e.contains("PRODUCT: required and missing"))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"not a plist",
            b"bplist00",
            b"bplist00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"<plist><array><string>x</string></array></plist>",
            b"<plist><dict><key>SERIAL</key>",
        ] {
            assert!(parse(body).is_err(), "{body:?}");
        }
    }

    /// A binary plist `{BOMB: [[[…"x"…] ×14] ×14] …}` nested `levels` deep, each array
    /// referencing the same inner object: 14^levels elements when expanded, a few bytes sent.
    fn bomb(levels: u8) -> Vec<u8> {
        let mut out = b"bplist00".to_vec();
        let mut offsets = Vec::new();
        // 0: the top dictionary; 1: its key; 2..2+levels: the arrays; last: the string.
        offsets.push(out.len());
        out.extend([0xD1, 1, 2]);
        offsets.push(out.len());
        out.extend(b"\x54BOMB");
        for level in 0..levels {
            offsets.push(out.len());
            out.push(0xAE);
            out.extend([3 + level; 14]);
        }
        offsets.push(out.len());
        out.extend(b"\x51x");
        let table = out.len();
        for offset in &offsets {
            out.push(u8::try_from(*offset).expect("small"));
        }
        out.extend([0, 0, 0, 0, 0, 0, 1, 1]);
        out.extend((offsets.len() as u64).to_be_bytes());
        out.extend(0u64.to_be_bytes());
        out.extend((table as u64).to_be_bytes());
        out
    }

    #[test]
    fn a_plist_bomb_stops_at_the_budget() {
        // Sanity: the builder makes a plist the crate reads (one level expands to 14 "x").
        let small = plist::Value::from_reader(Cursor::new(bomb(1))).expect("valid plist");
        let array = small
            .as_dictionary()
            .and_then(|d| d.get("BOMB"))
            .and_then(plist::Value::as_array)
            .expect("BOMB array");
        assert_eq!(array.len(), 14);
        let started = std::time::Instant::now();
        let error = parse(&bomb(10)).expect_err("the budget stops it");
        assert!(error.to_string().contains("plist elements"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
