//! Apple OS versions ("17", "17.5.1", "26.3.1 (a)") and build numbers ("21F79", "20F770750b"),
//! each with a total order that matches how Apple numbers releases.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Why a version or build string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("{0:?} is not an OS version (expected numbers separated by dots, like 17.5.1)")]
    Version(String),
    #[error("{0:?} is not a supplemental extra (expected a lowercase letter, like a or (a))")]
    Extra(String),
}

/// An OS version such as `17.5.1`, optionally with a supplemental extra such as `(a)` for a
/// Rapid Security Response or Background Security Improvement.
///
/// Missing components count as zero (`17` == `17.0` == `17.0.0`); a version with an extra is
/// newer than the same version without one, and `(b)` is newer than `(a)`.
#[derive(Debug, Clone)]
pub struct OsVersion {
    components: Vec<u32>,
    extra: Option<String>,
}

impl OsVersion {
    /// Parses the numeric part and an optional extra given separately (as pmv and DDM status
    /// reports carry them).
    pub fn with_extra(version: &str, extra: Option<&str>) -> Result<Self, VersionError> {
        let mut parsed: OsVersion = version.parse()?;
        if let Some(extra) = extra.map(str::trim).filter(|e| !e.is_empty()) {
            if parsed.extra.is_some() {
                return Err(VersionError::Version(format!("{version} {extra}")));
            }
            parsed.extra = Some(parse_extra(extra)?);
        }
        Ok(parsed)
    }

    pub fn major(&self) -> u32 {
        self.components.first().copied().unwrap_or(0)
    }

    pub fn minor(&self) -> u32 {
        self.components.get(1).copied().unwrap_or(0)
    }

    /// The supplemental extra, such as `(a)`.
    pub fn extra(&self) -> Option<&str> {
        self.extra.as_deref()
    }

    /// The version without its supplemental extra: `26.3.1 (a)` → `26.3.1`.
    pub fn base(&self) -> OsVersion {
        OsVersion {
            components: self.components.clone(),
            extra: None,
        }
    }

    /// Numeric part only, as Apple writes `ProductVersion`.
    pub fn numeric(&self) -> String {
        let parts: Vec<String> = self.components.iter().map(u32::to_string).collect();
        parts.join(".")
    }

    /// True when `prefix` (such as `26` or `26.3`) names this version or a family it belongs
    /// to: `26.3` matches 26.3 and 26.3.1, `26` matches every 26.x.
    pub fn starts_with(&self, prefix: &OsVersion) -> bool {
        prefix
            .components
            .iter()
            .enumerate()
            .all(|(i, p)| self.components.get(i).copied().unwrap_or(0) == *p)
    }

    fn significant(&self) -> &[u32] {
        let len = self
            .components
            .iter()
            .rposition(|c| *c != 0)
            .map_or(0, |i| i + 1);
        &self.components[..len]
    }
}

/// Reads a supplemental extra in either of Apple's spellings: `(a)` (pmv `ProductVersionExtra`,
/// the 403's `OSVersion` "16.1 (a)") or a bare `a` (the status item
/// `device.operating-system.supplemental.extra-version`, "for example, 'a'", and MDM's
/// `SupplementalOSVersionExtra`, "the ... version letter"). Kept as `(a)`.
fn parse_extra(extra: &str) -> Result<String, VersionError> {
    let inner = extra
        .strip_prefix('(')
        .and_then(|e| e.strip_suffix(')'))
        .unwrap_or(extra);
    if inner.is_empty() || inner.len() > 8 || !inner.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(VersionError::Extra(extra.to_string()));
    }
    Ok(format!("({inner})"))
}

impl FromStr for OsVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // `26.3.1 (a)`, `26.3.1 a`, and Apple's prose form `16.5.1(a)`.
        let (numeric, extra) = match s.split_once(char::is_whitespace) {
            Some((numeric, extra)) => (numeric, Some(parse_extra(extra.trim())?)),
            None => match s.find('(') {
                Some(at) => (&s[..at], Some(parse_extra(&s[at..])?)),
                None => (s, None),
            },
        };
        let components = numeric
            .split('.')
            .map(|part| {
                if part.is_empty() || part.len() > 9 || !part.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    part.parse::<u32>().ok()
                }
            })
            .collect::<Option<Vec<u32>>>()
            .filter(|c| !c.is_empty() && c.len() <= 4)
            .ok_or_else(|| VersionError::Version(s.to_string()))?;
        Ok(OsVersion { components, extra })
    }
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.numeric())?;
        if let Some(extra) = &self.extra {
            write!(f, " {extra}")?;
        }
        Ok(())
    }
}

impl Ord for OsVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        let len = a.len().max(b.len());
        (0..len)
            .map(|i| {
                let x = a.get(i).copied().unwrap_or(0);
                let y = b.get(i).copied().unwrap_or(0);
                x.cmp(&y)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            // `None < Some`: a supplemental release sorts after its base.
            .then_with(|| self.extra.cmp(&other.extra))
    }
}

impl PartialOrd for OsVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OsVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OsVersion {}

impl Hash for OsVersion {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
        self.extra.hash(state);
    }
}

impl serde::Serialize for OsVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Apple build number: `21F79`, `23D8133`, `20F770750b` (a supplemental build), `20A5303i`
/// (a beta).
///
/// Ordered by major number, train letters, build number, then suffix letters; strings that do
/// not follow that pattern sort after every well-formed build, by their text. Twin builds of one
/// version (`21H461` / `21H6461`) are distinct builds and order by their numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Build {
    key: BuildKey,
    raw: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum BuildKey {
    Parsed {
        major: u32,
        train: Box<str>,
        number: u64,
        suffix: Box<str>,
    },
    Unrecognised,
}

impl Build {
    pub fn new(raw: &str) -> Self {
        let raw = raw.trim();
        Build {
            key: parse_build(raw).unwrap_or(BuildKey::Unrecognised),
            raw: raw.into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True for builds that end in a lowercase letter: betas (`20A5303i`) and supplemental
    /// security builds (`23D771330a`).
    pub fn has_suffix(&self) -> bool {
        matches!(&self.key, BuildKey::Parsed { suffix, .. } if !suffix.is_empty())
    }
}

/// Whether a device reporting `version` with the base build `build` runs a pre-release (a beta)
/// of `version`. Beta builds end in a lowercase letter (`20A5303i`, `23G5070a`); so do
/// supplemental builds (`23D771330a`), but a device on a supplemental release says so with its
/// extra (`26.3.1 (a)`) and reports the base build as its build (real status reports; see
/// `shared/research/real-data.md` §3, §5).
pub fn runs_prerelease(version: &OsVersion, build: Option<&Build>) -> bool {
    version.extra().is_none() && build.is_some_and(Build::has_suffix)
}

/// Whether a device on `version` (`build`) runs `wanted` or newer. A beta of a version comes
/// before its release: a device on 26.6.1 `23G5070a` does not run the 26.6.1 release.
pub fn runs_at_least(version: &OsVersion, build: Option<&Build>, wanted: &OsVersion) -> bool {
    match version.cmp(wanted) {
        Ordering::Greater => true,
        Ordering::Equal => !runs_prerelease(version, build),
        Ordering::Less => false,
    }
}

fn parse_build(raw: &str) -> Option<BuildKey> {
    let bytes = raw.as_bytes();
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let major_len = digits(0);
    let train_len = bytes[major_len..]
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    let number_start = major_len + train_len;
    let number_len = digits(number_start);
    let suffix_start = number_start + number_len;
    let suffix_ok = bytes[suffix_start..].iter().all(u8::is_ascii_lowercase);
    if major_len == 0 || major_len > 4 || train_len == 0 || number_len == 0 || number_len > 18 {
        return None;
    }
    if !suffix_ok || bytes.len() - suffix_start > 4 {
        return None;
    }
    Some(BuildKey::Parsed {
        major: raw[..major_len].parse().ok()?,
        train: raw[major_len..number_start].into(),
        number: raw[number_start..suffix_start].parse().ok()?,
        suffix: raw[suffix_start..].into(),
    })
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl serde::Serialize for Build {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Build {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Build::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> OsVersion {
        s.parse().expect("valid version")
    }

    #[test]
    fn versions_order_like_apple_numbers_them() {
        assert!(v("17") < v("17.5"));
        assert!(v("17.5") < v("17.5.1"));
        assert!(v("17.5.1") < v("17.6"));
        assert!(v("17.10") > v("17.9"));
        assert!(v("18.7.2") < v("26.0"));
        assert_eq!(v("17"), v("17.0.0"));
        assert!(v("26.3.1") < v("26.3.1 (a)"));
        assert!(v("26.3.1 (a)") < v("26.3.1 (b)"));
        assert!(v("26.3.1 (a)") < v("26.3.2"));
        assert_eq!(v("26.3.1 (a)").to_string(), "26.3.1 (a)");
        assert_eq!(v("26.3.1 (a)").numeric(), "26.3.1");
        assert_eq!(
            OsVersion::with_extra("26.3.1", Some("(a)")).expect("valid"),
            v("26.3.1 (a)")
        );
    }

    #[test]
    fn malformed_versions_are_errors() {
        for bad in [
            "",
            "17.",
            ".5",
            "17..1",
            "seventeen",
            "17.5a",
            "-1",
            "17 (A)",
            "17 A",
            "17 a1",
            "17(a",
            "17 ()",
            "1.2.3.4.5",
        ] {
            assert!(
                bad.parse::<OsVersion>().is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(OsVersion::with_extra("17.5 (a)", Some("(b)")).is_err());
    }

    /// Apple writes the extra as `(a)` (pmv, the 403's `OSVersion`), as a bare `a` (the status
    /// item `device.operating-system.supplemental.extra-version`, MDM's
    /// `SupplementalOSVersionExtra`) and as `16.5.1(a)` in prose: all read alike.
    #[test]
    fn every_spelling_of_the_extra_reads_alike() {
        let expected = v("26.3.1 (a)");
        for text in ["26.3.1 (a)", "26.3.1 a", "26.3.1(a)", " 26.3.1  a "] {
            assert_eq!(v(text), expected, "{text:?}");
            assert_eq!(v(text).to_string(), "26.3.1 (a)", "{text:?}");
        }
        for extra in ["a", "(a)", " a "] {
            assert_eq!(
                OsVersion::with_extra("26.3.1", Some(extra)).expect("valid"),
                expected,
                "{extra:?}"
            );
        }
        assert_eq!(OsVersion::with_extra("26.3.1", Some("")), Ok(v("26.3.1")));
        assert!(OsVersion::with_extra("26.3.1", Some("A")).is_err());
    }

    #[test]
    fn a_beta_comes_before_its_release() {
        let release = v("26.6.1");
        let beta = Build::new("23G5070a");
        assert!(runs_prerelease(&release, Some(&beta)));
        assert!(!runs_at_least(&release, Some(&beta), &release));
        assert!(runs_at_least(&release, Some(&beta), &v("26.6")));
        assert!(runs_at_least(
            &release,
            Some(&Build::new("23G80")),
            &release
        ));
        assert!(runs_at_least(&release, None, &release));
        // A supplemental release carries its extra; its base build has no letter anyway.
        let patched = v("26.3.1 (a)");
        assert!(!runs_prerelease(&patched, Some(&Build::new("23D771330a"))));
        assert!(runs_at_least(
            &patched,
            Some(&Build::new("23D8133")),
            &v("26.3.1")
        ));
        assert!(!runs_at_least(&v("26.6"), None, &release));
    }

    #[test]
    fn prefixes_name_version_families() {
        assert!(v("26.3.1").starts_with(&v("26")));
        assert!(v("26.3.1").starts_with(&v("26.3")));
        assert!(!v("26.4").starts_with(&v("26.3")));
        assert!(v("26.3").starts_with(&v("26.3.0")));
    }

    #[test]
    fn builds_order_by_number_within_a_train() {
        assert!(Build::new("21F79") < Build::new("21F90"));
        assert!(Build::new("21F90") < Build::new("21G5"));
        assert!(Build::new("21H461") < Build::new("21H6461"));
        assert_ne!(Build::new("21H461"), Build::new("21H6461"));
        assert!(Build::new("20F75") < Build::new("20F770750b"));
        assert!(Build::new("23D8133") < Build::new("23D771330a"));
        assert!(Build::new("9Z9") < Build::new("10A1"));
        assert!(Build::new("20F770750b").has_suffix());
        assert!(!Build::new("23D8133").has_suffix());
        // Anything unrecognised is still ordered, after every real build.
        assert!(Build::new("99Z999") < Build::new("weird"));
    }

    fn version_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(0u32..30, 1..4),
            prop::option::of("[a-d]"),
        )
            .prop_map(|(parts, extra)| {
                let numeric: Vec<String> = parts.iter().map(u32::to_string).collect();
                match extra {
                    Some(e) => format!("{} ({e})", numeric.join(".")),
                    None => numeric.join("."),
                }
            })
    }

    fn build_strategy() -> impl Strategy<Value = String> {
        prop_oneof!["[1-9][0-9]?[A-Z][0-9]{1,9}[a-z]?", "[A-Za-z0-9]{0,6}",]
    }

    proptest! {
        #[test]
        fn version_order_is_total(a in version_strategy(), b in version_strategy(), c in version_strategy()) {
            let (a, b, c) = (v(&a), v(&b), v(&c));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
            if a <= b && b <= c { prop_assert!(a <= c); }
            prop_assert_eq!(a.cmp(&a), Ordering::Equal);
        }

        #[test]
        fn equal_versions_hash_alike(a in version_strategy(), zeros in 0usize..2) {
            use std::collections::hash_map::DefaultHasher;
            let a = v(&a);
            let padded: OsVersion = format!("{}{}{}", a.numeric(), ".0".repeat(zeros),
                a.extra().map(|e| format!(" {e}")).unwrap_or_default()).parse().expect("valid");
            if padded.components.len() <= 4 {
                prop_assert_eq!(&a, &padded);
                let hash = |x: &OsVersion| { let mut h = DefaultHasher::new(); x.hash(&mut h); h.finish() };
                prop_assert_eq!(hash(&a), hash(&padded));
            }
        }

        #[test]
        fn version_display_round_trips(a in version_strategy()) {
            let parsed = v(&a);
            prop_assert_eq!(parsed.to_string(), a.clone());
            prop_assert_eq!(v(&parsed.to_string()), parsed);
        }

        #[test]
        fn build_order_is_total(a in build_strategy(), b in build_strategy(), c in build_strategy()) {
            let (a, b, c) = (Build::new(&a), Build::new(&b), Build::new(&c));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
            prop_assert_eq!(a == b, a.as_str() == b.as_str());
            if a <= b && b <= c { prop_assert!(a <= c); }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<OsVersion>();
            let _ = Build::new(&s);
        }
    }
}
