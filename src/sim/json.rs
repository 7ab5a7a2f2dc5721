//! JSON as Apple devices write it, and the dotted-name nesting of status items.

use std::io;

use serde::Serialize;
use serde_json::{Map, Value};

/// Writes JSON the way captured device reports look: two-space indent, `" : "` between key and
/// value, and empty arrays and objects as `[\n\n  ]` (see `research/real-data.md` §5), so a
/// server is exercised with the real byte layout rather than a compact one.
#[derive(Debug, Default)]
pub(crate) struct AppleFormatter {
    indent: usize,
    has_value: bool,
}

impl AppleFormatter {
    fn newline_indent<W: ?Sized + io::Write>(&self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b"\n")?;
        for _ in 0..self.indent {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }

    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.indent = self.indent.saturating_sub(1);
        if !self.has_value {
            writer.write_all(b"\n")?;
        }
        self.newline_indent(writer)?;
        writer.write_all(bracket)?;
        self.has_value = true;
        Ok(())
    }

    fn element<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if !first {
            writer.write_all(b",")?;
        }
        self.newline_indent(writer)
    }
}

impl serde_json::ser::Formatter for AppleFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.indent += 1;
        self.has_value = false;
        writer.write_all(b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.indent += 1;
        self.has_value = false;
        writer.write_all(b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b" : ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Serialises in Apple's layout.
pub(crate) fn to_apple_vec(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, AppleFormatter::default());
    // Serialising a `serde_json::Value` into memory cannot fail.
    if value.serialize(&mut serializer).is_err() {
        out.clear();
    }
    out
}

/// Puts `value` at the dotted `name` inside `tree`: `softwareupdate.install-state` becomes
/// `{"softwareupdate": {"install-state": …}}`, as status reports nest item names.
pub(crate) fn insert_dotted(tree: &mut Map<String, Value>, name: &str, value: Value) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let Some(leaf) = parts.pop() else { return };
    let mut current = tree;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        current = next;
    }
    current.insert(leaf.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_layout_round_trips_and_looks_like_a_device() {
        let value = serde_json::json!({"Errors": [], "StatusItems": {"a": {"b": [1, 2], "c": {}}}});
        let bytes = to_apple_vec(&value);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.contains("\"Errors\" : [\n\n  ]"), "{text}");
        assert!(text.contains("\"c\" : {\n\n      }"), "{text}");
        let back: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(back, value);
    }

    #[test]
    fn dotted_names_nest() {
        let mut tree = Map::new();
        insert_dotted(&mut tree, "device.operating-system.version", "26.1".into());
        insert_dotted(
            &mut tree,
            "device.operating-system.supplemental.extra-version",
            "(a)".into(),
        );
        insert_dotted(&mut tree, "softwareupdate.install-state", "none".into());
        assert_eq!(
            Value::Object(tree),
            serde_json::json!({
                "device": {"operating-system": {"version": "26.1", "supplemental": {"extra-version": "(a)"}}},
                "softwareupdate": {"install-state": "none"}
            })
        );
    }
}
