//! The enrollment gate: during Automated Device Enrollment a device posts its MachineInfo; a
//! device below its policy's minimum OS is answered HTTP 403 `com.apple.softwareupdate.required`
//! with the exact version (and build) to install first. Parsing, signature checks and the
//! decision live here, free of HTTP; `crate::http::enroll` serves them.

pub mod ber;
pub mod chain;
pub mod decide;
pub mod machine_info;
pub mod response;
pub mod signed;
pub mod tally;

pub use decide::{Decision, GateView, Verdict, decide};
pub use machine_info::MachineInfo;
pub use signed::Anchors;

/// Why a MachineInfo request is refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnrollError {
    #[error("MachineInfo: {0}")]
    Plist(String),
    #[error("{key}: {why}")]
    Field { key: String, why: String },
    #[error("CMS: {0}")]
    Cms(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("signer: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Unsigned(String),
    #[error("{0}")]
    Request(String),
}

impl EnrollError {
    /// Every `reason` value.
    pub const REASONS: [&'static str; 7] = [
        "InvalidPlist",
        "InvalidField",
        "InvalidCms",
        "BadSignature",
        "UntrustedSigner",
        "Unsigned",
        "InvalidRequest",
    ];

    /// The HTTP status: 403 when the device is not trusted (unsigned or not chaining to the
    /// roots), 400 when the request is malformed.
    pub fn status(&self) -> u16 {
        match self {
            EnrollError::Untrusted(_) | EnrollError::Unsigned(_) => 403,
            _ => 400,
        }
    }

    /// A fixed reason per variant, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::Plist(_) => "InvalidPlist",
            EnrollError::Field { .. } => "InvalidField",
            EnrollError::Cms(_) => "InvalidCms",
            EnrollError::Signature(_) => "BadSignature",
            EnrollError::Untrusted(_) => "UntrustedSigner",
            EnrollError::Unsigned(_) => "Unsigned",
            EnrollError::Request(_) => "InvalidRequest",
        }
    }
}

/// How a body arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `application/pkcs7-signature`, or DER that looks like it.
    Signed,
    /// An XML or binary plist (a proxy already unwrapped the signature).
    Plain,
}

impl Envelope {
    /// From the Content-Type, else from the first bytes.
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Envelope {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("application/pkcs7-signature" | "application/pkcs7-mime") => Envelope::Signed,
            Some(
                "application/xml" | "text/xml" | "application/x-plist" | "application/x-bplist",
            ) => Envelope::Plain,
            _ if body.first() == Some(&0x30) => Envelope::Signed,
            _ => Envelope::Plain,
        }
    }
}

/// Who vouches for MachineInfo.
pub enum Trust {
    /// The CMS signer must chain to these roots (Apple Root CA by default); unsigned MachineInfo
    /// is refused.
    Signed(Anchors),
    /// `--enroll-allow-unsigned`: a proxy in front already verified the device; a plain plist is
    /// taken as it is, and a signed envelope still has to carry a valid signature (its signer is
    /// not chained: the proxy did that).
    Unsigned,
}

/// Reads MachineInfo from a body: a signed envelope is verified and its signer chained to the
/// trust roots; a plain plist is refused unless unsigned MachineInfo is allowed.
pub fn read(
    body: &[u8],
    envelope: Envelope,
    trust: &Trust,
    now: rustls_pki_types::UnixTime,
) -> Result<MachineInfo, EnrollError> {
    let anchors = match trust {
        Trust::Signed(anchors) => Some(anchors),
        Trust::Unsigned => None,
    };
    match envelope {
        Envelope::Signed => {
            let verified = signed::open(body, anchors, now)?;
            machine_info::parse(&verified.content)
        }
        Envelope::Plain if anchors.is_some() => Err(EnrollError::Unsigned(
            "unsigned MachineInfo is refused: it must be CMS-signed by the device identity certificate (--enroll-allow-unsigned only behind a proxy that verified it)".into(),
        )),
        Envelope::Plain => machine_info::parse(body),
    }
}
