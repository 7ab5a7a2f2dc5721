//! The 403 body Apple defines in `mdm/errors/softwareupdate.required.yaml`, as JSON or as an XML
//! plist.

use crate::catalog::{OsVersion, Platform};
use crate::resolve::Required;

/// The first version of each OS that takes `details.RequireBetaProgram` in the 403, as Apple's
/// `mdm/errors/softwareupdate.required.yaml` has it: the key's own `supportedOS` (iOS 17.5,
/// macOS 14.5) laid over the body's (visionOS 26.0; tvOS and watchOS `n/a`). A test reads the
/// schema file and checks this table.
pub fn require_beta_program_introduced(platform: Platform) -> Option<(u32, u32)> {
    match platform {
        Platform::Ios | Platform::IpadOs => Some((17, 5)),
        Platform::MacOs => Some((14, 5)),
        Platform::VisionOs => Some((26, 0)),
        Platform::TvOs | Platform::WatchOs | Platform::AudioOs => None,
    }
}

/// Whether a device on `platform` `running` understands `RequireBetaProgram`.
pub fn require_beta_program_supported(platform: Platform, running: &OsVersion) -> bool {
    require_beta_program_introduced(platform)
        .is_some_and(|introduced| crate::declarations::at_least(running, introduced))
}

/// The body's format, from the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// XML when the client weighs XML above JSON (`q` values, wildcards); JSON otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Json;
        };
        let weight = |wanted: &[&str]| -> f32 {
            accept
                .split(',')
                .filter_map(|part| {
                    let mut fields = part.split(';');
                    let media = fields.next()?.trim().to_ascii_lowercase();
                    let q = fields
                        .filter_map(|f| f.trim().strip_prefix("q="))
                        .find_map(|q| q.trim().parse::<f32>().ok())
                        .unwrap_or(1.0);
                    let matches = wanted.contains(&media.as_str())
                        || media == "*/*"
                        || (media == "application/*"
                            && wanted.iter().any(|w| w.starts_with("application/")));
                    matches.then_some(q)
                })
                .fold(0.0, f32::max)
        };
        if weight(&["application/xml", "text/xml"]) > weight(&["application/json"]) {
            Format::Xml
        } else {
            Format::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
        }
    }
}

/// A beta program to enroll the device in: `(description, seeding token)`.
pub type BetaProgram<'a> = (&'a str, &'a str);

/// The body of HTTP 403 `com.apple.softwareupdate.required`.
pub fn update_required(
    required: &Required,
    beta: Option<BetaProgram<'_>>,
    platform: Option<Platform>,
    running: Option<&str>,
    policy: &str,
    format: Format,
) -> Vec<u8> {
    let os = platform.map_or("the operating system".to_string(), |p| p.to_string());
    let version = required.version.to_string();
    let message = format!(
        "This device needs {os} {version} before it can be set up. It will update now and then continue setup."
    );
    let description = format!(
        "UpdatePolicy {policy} requires {version}{} (running {})",
        required
            .build
            .as_ref()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default(),
        running.unwrap_or("an unknown version"),
    );
    let mut details = serde_json::Map::new();
    details.insert("OSVersion".into(), version.into());
    if let Some(build) = &required.build {
        details.insert("BuildVersion".into(), build.to_string().into());
    }
    if let Some((description, token)) = beta {
        details.insert(
            "RequireBetaProgram".into(),
            serde_json::json!({"Description": description, "Token": token}),
        );
    }
    let body = serde_json::json!({
        "code": "com.apple.softwareupdate.required",
        "message": message,
        "description": description,
        "details": details,
    });
    match format {
        Format::Json => serde_json::to_vec(&body).unwrap_or_default(),
        Format::Xml => {
            let mut out = Vec::new();
            // Writing a plist of strings to a Vec cannot fail.
            let _ = to_plist(&body).to_writer_xml(&mut out);
            out
        }
    }
}

fn to_plist(value: &serde_json::Value) -> plist::Value {
    match value {
        serde_json::Value::Object(map) => {
            plist::Value::Dictionary(map.iter().map(|(k, v)| (k.clone(), to_plist(v))).collect())
        }
        serde_json::Value::Array(items) => {
            plist::Value::Array(items.iter().map(to_plist).collect())
        }
        serde_json::Value::String(s) => plist::Value::String(s.clone()),
        serde_json::Value::Bool(b) => plist::Value::Boolean(*b),
        other => plist::Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_only_when_asked_for_and_json_is_not() {
        for (accept, format) in [
            (None, Format::Json),
            (Some("*/*"), Format::Json),
            (Some("application/json"), Format::Json),
            (Some("application/xml"), Format::Xml),
            (Some("text/xml;q=0.9"), Format::Xml),
            (Some("application/xml, application/json"), Format::Json),
            (Some("application/xml, application/json;q=0.1"), Format::Xml),
            (Some("application/json;q=0, application/xml"), Format::Xml),
            (Some("text/xml;q=0.2, */*;q=0.5"), Format::Json),
            (Some("application/xml;q=abc"), Format::Xml),
        ] {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn the_body_carries_the_build_only_when_given() {
        let required = Required {
            version: "26.1".parse().expect("version"),
            build: None,
        };
        let body = update_required(
            &required,
            None,
            Some(Platform::Ios),
            None,
            "ns/p",
            Format::Json,
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["details"], serde_json::json!({"OSVersion": "26.1"}));
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("iOS 26.1"))
        );
        let with_build = Required {
            build: Some(crate::catalog::Build::new("23B85")),
            ..required
        };
        let body = update_required(
            &with_build,
            Some(("Seed", "t0k")),
            None,
            Some("18.6 (22G86)"),
            "ns/p",
            Format::Xml,
        );
        let plist = plist::Value::from_reader_xml(body.as_slice()).expect("XML plist");
        let details = plist
            .as_dictionary()
            .and_then(|d| d.get("details"))
            .and_then(plist::Value::as_dictionary)
            .expect("details");
        assert_eq!(
            details
                .get("BuildVersion")
                .and_then(plist::Value::as_string),
            Some("23B85")
        );
        assert!(details.get("RequireBetaProgram").is_some());
    }
}
