//! The enrollment gate: during Automated Device Enrollment a device posts its MachineInfo; a
//! device below its policy's minimum OS is answered HTTP 403 `com.apple.softwareupdate.required`
//! with the exact version (and build) to install first. Parsing, signature checks and the
//! decision live here, free of HTTP; `crate::http::enroll` serves them.

pub mod ber;
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
    Request(String),
}

impl EnrollError {
    /// A fixed reason per variant, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::Plist(_) => "InvalidPlist",
            EnrollError::Field { .. } => "InvalidField",
            EnrollError::Cms(_) => "InvalidCms",
            EnrollError::Signature(_) => "BadSignature",
            EnrollError::Untrusted(_) => "UntrustedSigner",
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

/// Reads MachineInfo from a body: a signed envelope is verified (and chained to `anchors` when
/// given); a plain plist is refused when `anchors` are given, since nothing vouches for it.
pub fn read(
    body: &[u8],
    envelope: Envelope,
    anchors: Option<&Anchors>,
    now: rustls_pki_types::UnixTime,
) -> Result<MachineInfo, EnrollError> {
    match envelope {
        Envelope::Signed => {
            let verified = signed::open(body, anchors, now)?;
            machine_info::parse(&verified.content)
        }
        Envelope::Plain if anchors.is_some() => Err(EnrollError::Request(
            "unsigned MachineInfo is refused: a CA bundle is configured, so the CMS signature is required".into(),
        )),
        Envelope::Plain => machine_info::parse(body),
    }
}
