//! The CMS SignedData envelope around MachineInfo (`application/pkcs7-signature`): parsed with
//! RustCrypto's `cms`, the signature checked with aws-lc-rs (the one crypto provider of the
//! build), the signer optionally chained to trust roots (`super::chain`).

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use cms::cert::CertificateChoices;
use cms::cert::x509::Certificate;
use cms::cert::x509::der::asn1::OctetString;
use cms::cert::x509::der::oid::ObjectIdentifier;
use cms::cert::x509::der::{Decode, Encode};
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::EnrollError;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
pub(super) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(super) const SHA1_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
pub(super) const SHA256_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
pub(super) const SHA384_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
pub(super) const SHA512_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
pub(super) const EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(super) const ECDSA_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
pub(super) const ECDSA_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
pub(super) const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(super) const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A verified envelope: the signed content.
#[derive(Debug)]
pub struct Verified {
    pub content: Vec<u8>,
}

/// Trust roots the signer must chain to.
pub struct Anchors {
    roots: Vec<Certificate>,
}

impl Anchors {
    /// Reads a PEM bundle; at least one certificate, every one parseable.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA bundle: {e}"))?;
        if certificates.is_empty() {
            return Err("CA bundle: no certificate in it".into());
        }
        let roots = certificates
            .iter()
            .map(|c| {
                Certificate::from_der(c).map_err(|e| format!("CA bundle: not a certificate: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Anchors { roots })
    }

    /// Apple Root CA, which device identity certificates chain to (the default).
    pub fn apple() -> Self {
        // The embedded root is checked by a test; an empty set would refuse every device.
        Self::from_pem(crate::catalog::fetch::APPLE_ROOT_CA_PEM)
            .unwrap_or(Anchors { roots: Vec::new() })
    }

    /// The roots' subjects, for the start-up log.
    pub fn subjects(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| r.tbs_certificate.subject.to_string())
            .collect()
    }
}

/// Opens a DER SignedData: checks the signature over the content and, when `anchors` are given,
/// that the signer chains to one of them (with the envelope's other certificates as
/// intermediates) at `now`.
pub fn open(der: &[u8], anchors: Option<&Anchors>, now: UnixTime) -> Result<Verified, EnrollError> {
    let bad = |why: String| EnrollError::Cms(why);
    // BER is allowed (and what Apple's signers write): read it, then hand DER to `cms`.
    let tree = super::ber::parse(der).map_err(|e| {
        bad(format!(
            "not a CMS message: {}",
            e.to_string().trim_start_matches("CMS: ")
        ))
    })?;
    let normalized = super::ber::to_der(&tree);
    let info =
        ContentInfo::from_der(&normalized).map_err(|e| bad(format!("not a CMS message: {e}")))?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(bad(format!(
            "CMS content type {} is not SignedData",
            info.content_type
        )));
    }
    let signed: SignedData = info
        .content
        .decode_as()
        .map_err(|e| bad(format!("SignedData: {e}")))?;
    let content = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| bad("the SignedData carries no content (detached signature)".into()))?
        .decode_as::<OctetString>()
        .map_err(|e| bad(format!("content: {e}")))?
        .into_bytes();
    let certificates: Vec<&Certificate> = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(c) => Some(c),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let signer_info = match signed.signer_infos.0.as_slice() {
        [one] => one,
        [] => return Err(bad("no signer".into())),
        _ => return Err(bad("more than one signer".into())),
    };
    let signer = certificates
        .iter()
        .find(|c| identifies(&signer_info.sid, c))
        .ok_or_else(|| bad("the signer's certificate is not in the message".into()))?;
    verify_signer_info(
        signer_info,
        signer,
        &content,
        signed.encap_content_info.econtent_type,
        super::ber::signed_attributes(&tree),
    )?;
    if let Some(anchors) = anchors {
        let pool: Vec<&Certificate> = certificates
            .iter()
            .copied()
            .filter(|c| !std::ptr::eq(*c, *signer))
            .collect();
        super::chain::verify(signer, &pool, &anchors.roots, now)?;
    }
    Ok(Verified { content })
}

fn identifies(sid: &SignerIdentifier, certificate: &Certificate) -> bool {
    let tbs = &certificate.tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            id.issuer == tbs.issuer && id.serial_number == tbs.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == SUBJECT_KEY_IDENTIFIER)
            .any(|e| {
                cms::cert::x509::ext::pkix::SubjectKeyIdentifier::from_der(e.extn_value.as_bytes())
                    .is_ok_and(|found| found == *ski)
            }),
    }
}

const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// `signed_attributes`: their bytes as the signer wrote them (the signature covers those).
fn verify_signer_info(
    signer_info: &SignerInfo,
    signer: &Certificate,
    content: &[u8],
    content_type: ObjectIdentifier,
    signed_attributes: Option<Vec<u8>>,
) -> Result<(), EnrollError> {
    let bad = |why: &str| EnrollError::Cms(why.to_string());
    let digest_algorithm = match signer_info.digest_alg.oid {
        ID_SHA1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        ID_SHA256 => &digest::SHA256,
        ID_SHA384 => &digest::SHA384,
        ID_SHA512 => &digest::SHA512,
        other => {
            return Err(EnrollError::Cms(format!(
                "digest algorithm {other} not supported"
            )));
        }
    };
    let signed_message = match &signer_info.signed_attrs {
        Some(attributes) => {
            // With signed attributes the signature covers them (DER, as a SET OF), and they
            // carry the content's digest and type.
            // RFC 5652 §11: exactly one content-type and one message-digest attribute, each
            // with exactly one value.
            let value_of = |oid: ObjectIdentifier, name: &str| {
                let mut found = attributes.iter().filter(|a| a.oid == oid);
                match (found.next(), found.next()) {
                    (Some(attribute), None) if attribute.values.len() == 1 => {
                        attribute.values.iter().next().ok_or_else(|| {
                            EnrollError::Cms(format!("the {name} attribute has no value"))
                        })
                    }
                    (None, _) => Err(EnrollError::Cms(format!(
                        "signed attributes lack the {name}"
                    ))),
                    _ => Err(EnrollError::Cms(format!(
                        "signed attributes must hold exactly one {name} with one value"
                    ))),
                }
            };
            let digest_value = value_of(ID_MESSAGE_DIGEST, "message digest")?
                .decode_as::<OctetString>()
                .map_err(|_| bad("the message-digest attribute is not an octet string"))?;
            if digest_value.as_bytes() != digest::digest(digest_algorithm, content).as_ref() {
                return Err(EnrollError::Signature(
                    "the content does not match the signed digest".into(),
                ));
            }
            let declared_type = value_of(ID_CONTENT_TYPE, "content type")?
                .decode_as::<ObjectIdentifier>()
                .map_err(|_| bad("the content-type attribute is not an object identifier"))?;
            if declared_type != content_type {
                return Err(EnrollError::Signature(
                    "the signed content type differs from the content's".into(),
                ));
            }
            match signed_attributes {
                Some(bytes) => bytes,
                None => attributes
                    .to_der()
                    .map_err(|e| EnrollError::Cms(format!("signed attributes: {e}")))?,
            }
        }
        None => {
            if content_type != ID_DATA {
                return Err(bad("content other than data needs signed attributes"));
            }
            content.to_vec()
        }
    };
    let key_info = &signer.tbs_certificate.subject_public_key_info;
    let key = key_info.subject_public_key.raw_bytes();
    let algorithm: &'static dyn VerificationAlgorithm = match (
        key_info.algorithm.oid,
        signer_info.signature_algorithm.oid,
        signer_info.digest_alg.oid,
    ) {
        (RSA_ENCRYPTION, RSA_ENCRYPTION, ID_SHA1) | (RSA_ENCRYPTION, SHA1_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        // Device identity keys from Apple's legacy device CA may be 1024-bit (`super::chain`).
        (RSA_ENCRYPTION, RSA_ENCRYPTION, ID_SHA256) | (RSA_ENCRYPTION, SHA256_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        }
        (RSA_ENCRYPTION, RSA_ENCRYPTION, ID_SHA384) | (RSA_ENCRYPTION, SHA384_WITH_RSA, _) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (RSA_ENCRYPTION, RSA_ENCRYPTION, ID_SHA512) | (RSA_ENCRYPTION, SHA512_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY
        }
        (EC_PUBLIC_KEY, signature_oid, digest_oid) => {
            let curve = key_info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            let hash = match signature_oid {
                ECDSA_SHA256 => ID_SHA256,
                ECDSA_SHA384 => ID_SHA384,
                EC_PUBLIC_KEY => digest_oid,
                other => {
                    return Err(EnrollError::Cms(format!(
                        "signature algorithm {other} not supported"
                    )));
                }
            };
            match (curve, hash) {
                (Some(P256), ID_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
                (Some(P256), ID_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
                (Some(P384), ID_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
                (Some(P384), ID_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
                _ => return Err(bad("EC key curve or hash not supported")),
            }
        }
        (key_oid, signature_oid, _) => {
            return Err(EnrollError::Cms(format!(
                "key {key_oid} with signature algorithm {signature_oid} not supported"
            )));
        }
    };
    UnparsedPublicKey::new(algorithm, key)
        .verify(&signed_message, signer_info.signature.as_bytes())
        .map_err(|_| EnrollError::Signature("the signature does not verify".into()))
}
