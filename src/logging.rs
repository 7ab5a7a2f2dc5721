//! The process's log on stderr: `text` for people, `json` for log pipelines (one JSON object per
//! line, every field of the event and of the spans around it a top-level key, so a pipeline
//! reads `enrollment_id` or `resource` without parsing messages).
//!
//! Field names the operator's events use for what they are about: `enrollment_id` (a device),
//! `resource` (`"UpdatePolicy ns/name"`), `serial` (a device known only by its serial number).

use std::fmt;
use std::io::IsTerminal;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the fields.
    Json,
}

/// Installs the global subscriber writing to stderr. `RUST_LOG` wins over `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
    }
}

/// Keys every line has; a field of the same name is written as `field.<name>` instead.
const RESERVED: [&str; 4] = ["timestamp", "level", "target", "span"];

/// The `json` line format: `{"timestamp","level","target","span"?, fields…}` where the fields
/// are the spans' (outermost first) then the event's, a later one replacing an earlier one of
/// the same name. Span fields are read back from what [`JsonFields`] stored for each span.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                let extensions = span.extensions();
                let Some(stored) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&stored.fields) {
                    for (name, value) in map {
                        fields.set(&name, value);
                    }
                }
            }
        }
        event.record(&mut fields);
        let metadata = event.metadata();
        let target = fields
            .log_target
            .take()
            .unwrap_or_else(|| metadata.target().to_string());
        // The fixed keys first, so people reading a line find them in one place.
        let mut text = String::from("{");
        // Microseconds in UTC, as the text format writes them.
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ");
        push_pair(&mut text, "timestamp", &Value::String(now.to_string()));
        push_pair(
            &mut text,
            "level",
            &Value::String(metadata.level().as_str().into()),
        );
        push_pair(&mut text, "target", &Value::String(target));
        if let Some(name) = span_name {
            push_pair(&mut text, "span", &Value::String(name.into()));
        }
        for (name, value) in &fields.values {
            if RESERVED.contains(&name.as_str()) {
                push_pair(&mut text, &format!("field.{name}"), value);
            } else {
                push_pair(&mut text, name, value);
            }
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// Appends `"name":value` to an object being written.
fn push_pair(text: &mut String, name: &str, value: &Value) {
    if text.len() > 1 {
        text.push(',');
    }
    text.push_str(&Value::String(name.to_string()).to_string());
    text.push(':');
    text.push_str(&value.to_string());
}

/// An event's fields in the order first seen, as JSON values.
#[derive(Debug, Default)]
struct Fields {
    values: Vec<(String, Value)>,
    /// `log.target` of a record forwarded from the `log` crate: its real target.
    log_target: Option<String>,
}

impl Fields {
    fn set(&mut self, name: &str, value: Value) {
        match self.values.iter_mut().find(|(known, _)| known == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name.to_string(), value)),
        }
    }

    fn record(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // Records from the `log` crate carry their metadata as `log.*` fields.
        if let Some(rest) = name.strip_prefix("log.") {
            if rest == "target"
                && let Value::String(target) = value
            {
                self.log_target = Some(target);
            }
            return;
        }
        self.set(name, value);
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.record(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Captures what the `json` format writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().expect("captured").clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }

    #[test]
    fn event_fields_are_top_level_keys_with_their_types() {
        let lines = lines_of(|| {
            tracing::warn!(
                enrollment_id = "ABC-123",
                devices = 3u64,
                held = true,
                resource = %"UpdatePolicy fleet/macs",
                "status report refused"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "status report refused");
        assert_eq!(line["enrollment_id"], "ABC-123");
        assert_eq!(line["devices"], 3);
        assert_eq!(line["held"], true);
        assert_eq!(line["resource"], "UpdatePolicy fleet/macs");
        assert_eq!(line["target"], module_path!());
        let stamp = line["timestamp"].as_str().expect("a timestamp");
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
        assert_eq!(stamp.len(), "2026-12-07T22:29:47.079223Z".len(), "{stamp}");
        assert!(line.get("span").is_none());
    }

    #[test]
    fn span_fields_are_flattened_and_the_event_wins_a_name_clash() {
        let lines = lines_of(|| {
            let outer =
                tracing::info_span!("reconcile", resource = "UpdatePolicy a/b", pass = 1u64);
            let _outer = outer.enter();
            let inner = tracing::info_span!("device", enrollment_id = "E1", pass = 2u64);
            let _inner = inner.enter();
            tracing::info!(pass = 3u64, "applied");
        });
        let line = &lines[0];
        assert_eq!(line["resource"], "UpdatePolicy a/b");
        assert_eq!(line["enrollment_id"], "E1");
        assert_eq!(line["pass"], 3);
        assert_eq!(line["span"], "device");
        assert!(line.get("spans").is_none() && line.get("fields").is_none());
    }

    #[test]
    fn a_field_named_like_a_fixed_key_does_not_replace_it() {
        let lines = lines_of(|| tracing::error!(level = "custom", target = 7u64, "clash"));
        let line = &lines[0];
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["field.level"], "custom");
        assert_eq!(line["field.target"], 7);
        assert_eq!(line["message"], "clash");
    }

    #[test]
    fn quotes_newlines_and_escape_bytes_stay_inside_one_json_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                why = "a \"quoted\"\nsecond line \u{1b}[31mred",
                "two\nlines"
            );
        });
        let text = String::from_utf8(captured.0.lock().expect("captured").clone()).expect("UTF-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let line: Value = serde_json::from_str(text.trim_end()).expect("JSON");
        assert_eq!(line["why"], "a \"quoted\"\nsecond line \u{1b}[31mred");
        assert_eq!(line["message"], "two\nlines");
    }
}
