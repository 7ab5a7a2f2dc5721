//! Chains the MachineInfo signer to the trust roots: Apple Root CA by default, or the PEM CAs of
//! `--enroll-ca-bundle`. The intermediates come from the envelope's own certificates.
//!
//! Apple: "This dictionary is CMS-signed with the device identity certificate. The system
//! includes the device's certificate and all necessary intermediate certificates. The
//! certificate chain should validate against the Apple Root CA."
//! (<https://developer.apple.com/documentation/devicemanagement/machineinfo>). The device CA
//! Apple names for device certificates is "Apple iPhone Device CA"
//! (<https://developer.apple.com/library/archive/documentation/NetworkingInternet/Conceptual/iPhoneOTAConfiguration/profile-service/profile-service.html>),
//! issued by "Apple iPhone Certification Authority", issued by "Apple Root CA"
//! (`tests/fixtures/enroll/apple/`). That legacy PKI is why this is not rustls-webpki: both
//! intermediates are signed with SHA-1, the device CA holds an RSA-1024 key, and both expired
//! (2014-04-16 and 2022-04-12) while devices keep signing with certificates they issued. So the
//! signer's own validity is checked at `now`, the CAs' validity is not, SHA-1 and RSA keys from
//! 1024 bits are accepted in certificates, and everything else is checked: names, every
//! signature, the CA flag and key usage of each issuer, the depth.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use cms::cert::x509::Certificate;
use cms::cert::x509::der::oid::ObjectIdentifier;
use cms::cert::x509::der::{Decode, Encode};
use cms::cert::x509::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use rustls_pki_types::UnixTime;

use super::EnrollError;
// The algorithm and curve identifiers the envelope check knows, shared with it.
use super::signed::{
    EC_PUBLIC_KEY, ECDSA_SHA256, ECDSA_SHA384, P256, P384, RSA_ENCRYPTION, SHA1_WITH_RSA,
    SHA256_WITH_RSA, SHA384_WITH_RSA, SHA512_WITH_RSA,
};

const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// Certificates between the signer and a root, at most (Apple's chain has two).
const MAX_INTERMEDIATES: usize = 4;

/// The signer is valid at `now` and chains, through `pool`, to one of `roots`.
pub fn verify(
    signer: &Certificate,
    pool: &[&Certificate],
    roots: &[Certificate],
    now: UnixTime,
) -> Result<(), EnrollError> {
    let untrusted = |why: String| EnrollError::Untrusted(why);
    let validity = &signer.tbs_certificate.validity;
    let now_secs = now.as_secs();
    if now_secs < validity.not_before.to_unix_duration().as_secs() {
        return Err(untrusted(format!(
            "the signer's certificate is not valid before {}",
            validity.not_before
        )));
    }
    if now_secs > validity.not_after.to_unix_duration().as_secs() {
        return Err(untrusted(format!(
            "the signer's certificate expired on {}",
            validity.not_after
        )));
    }
    let mut why = None;
    if reaches_root(signer, pool, roots, 0, &mut why) {
        return Ok(());
    }
    Err(untrusted(format!(
        "the signer does not chain to the trust roots: {}",
        why.unwrap_or_else(|| format!("nothing issued \"{}\"", signer.tbs_certificate.issuer))
    )))
}

/// Depth-first: a root that issued `certificate`, or an intermediate that did and reaches one.
/// `why` keeps the last reason a candidate issuer was turned down.
fn reaches_root(
    certificate: &Certificate,
    pool: &[&Certificate],
    roots: &[Certificate],
    depth: usize,
    why: &mut Option<String>,
) -> bool {
    let issuer = &certificate.tbs_certificate.issuer;
    for root in roots
        .iter()
        .filter(|r| r.tbs_certificate.subject == *issuer)
    {
        match signed_by(certificate, root) {
            Ok(()) => return true,
            Err(reason) => *why = Some(reason),
        }
    }
    if depth >= MAX_INTERMEDIATES {
        *why = Some(format!("more than {MAX_INTERMEDIATES} intermediates"));
        return false;
    }
    for candidate in pool
        .iter()
        .filter(|c| c.tbs_certificate.subject == *issuer)
        // Not itself: a self-signed certificate in the envelope vouches for nothing.
        .filter(|c| !std::ptr::eq(**c, certificate))
    {
        let checked = may_issue(candidate).and_then(|()| signed_by(certificate, candidate));
        match checked {
            Ok(()) => {
                if reaches_root(candidate, pool, roots, depth + 1, why) {
                    return true;
                }
            }
            Err(reason) => *why = Some(reason),
        }
    }
    false
}

/// An intermediate must say it is a CA and, when it lists key usages, that it signs
/// certificates.
fn may_issue(certificate: &Certificate) -> Result<(), String> {
    let subject = &certificate.tbs_certificate.subject;
    let extension = |oid: ObjectIdentifier| {
        certificate
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == oid)
    };
    let is_ca = extension(BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|b| b.ca);
    if !is_ca {
        return Err(format!("\"{subject}\" is not a CA certificate"));
    }
    if let Some(extension) = extension(KEY_USAGE) {
        let usage = KeyUsage::from_der(extension.extn_value.as_bytes())
            .map_err(|e| format!("\"{subject}\": key usage: {e}"))?;
        if !usage.0.contains(KeyUsages::KeyCertSign) {
            return Err(format!("\"{subject}\" may not sign certificates"));
        }
    }
    Ok(())
}

/// `certificate`'s signature verifies with `issuer`'s key.
fn signed_by(certificate: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let subject = &certificate.tbs_certificate.subject;
    let key_info = &issuer.tbs_certificate.subject_public_key_info;
    let curve = key_info
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let algorithm: &'static dyn VerificationAlgorithm = match (
        key_info.algorithm.oid,
        certificate.signature_algorithm.oid,
        curve,
    ) {
        // Apple's device CAs: SHA-1 and a 1024-bit key.
        (RSA_ENCRYPTION, SHA1_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (RSA_ENCRYPTION, SHA256_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        }
        (RSA_ENCRYPTION, SHA384_WITH_RSA, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (RSA_ENCRYPTION, SHA512_WITH_RSA, _) => {
            &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY
        }
        (EC_PUBLIC_KEY, ECDSA_SHA256, Some(P256)) => &signature::ECDSA_P256_SHA256_ASN1,
        (EC_PUBLIC_KEY, ECDSA_SHA384, Some(P256)) => &signature::ECDSA_P256_SHA384_ASN1,
        (EC_PUBLIC_KEY, ECDSA_SHA256, Some(P384)) => &signature::ECDSA_P384_SHA256_ASN1,
        (EC_PUBLIC_KEY, ECDSA_SHA384, Some(P384)) => &signature::ECDSA_P384_SHA384_ASN1,
        (key, algorithm, _) => {
            return Err(format!(
                "\"{subject}\" is signed with {algorithm} by a {key} key, which is not supported"
            ));
        }
    };
    let tbs = certificate
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("\"{subject}\": {e}"))?;
    let signature = certificate
        .signature
        .as_bytes()
        .ok_or_else(|| format!("\"{subject}\": the signature is not whole bytes"))?;
    UnparsedPublicKey::new(algorithm, key_info.subject_public_key.raw_bytes())
        .verify(&tbs, signature)
        .map_err(|_| {
            format!(
                "the signature on \"{subject}\" does not verify with the key of \"{}\"",
                issuer.tbs_certificate.subject
            )
        })
}
