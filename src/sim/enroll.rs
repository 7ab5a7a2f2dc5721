//! The device's side of Automated Device Enrollment: MachineInfo written as a plist and signed
//! in a CMS SignedData envelope with the device's identity key, as Setup Assistant posts it.
//! Tests and benchmarks sign with a test CA; real devices chain to Apple's device CAs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use cms::cert::x509::Certificate;
use cms::cert::x509::attr::Attribute;
use cms::cert::x509::der::asn1::{OctetString, SetOfVec};
use cms::cert::x509::der::oid::ObjectIdentifier;
use cms::cert::x509::der::{Any, Decode, Encode, Tag};
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// The key a device signs MachineInfo with.
pub enum IdentityKey {
    Rsa(RsaKeyPair),
    EcdsaP256(EcdsaKeyPair),
}

/// A device identity: its key, its certificate, and the CAs between it and the root.
pub struct DeviceIdentity {
    key: IdentityKey,
    certificate: Certificate,
    chain: Vec<Certificate>,
}

impl DeviceIdentity {
    /// From a PKCS#8 key (RSA or ECDSA P-256) and DER certificates (the device's first).
    pub fn from_der(pkcs8: &[u8], certificate: &[u8], chain: &[&[u8]]) -> Result<Self, String> {
        let key = match RsaKeyPair::from_pkcs8(pkcs8) {
            Ok(key) => IdentityKey::Rsa(key),
            Err(_) => IdentityKey::EcdsaP256(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                    .map_err(|e| format!("key: neither RSA nor ECDSA P-256: {e}"))?,
            ),
        };
        let parse =
            |der: &[u8]| Certificate::from_der(der).map_err(|e| format!("certificate: {e}"));
        Ok(DeviceIdentity {
            key,
            certificate: parse(certificate)?,
            chain: chain.iter().map(|c| parse(c)).collect::<Result<_, _>>()?,
        })
    }

    fn sign(&self, message: &[u8]) -> Result<(ObjectIdentifier, Vec<u8>), String> {
        let rng = SystemRandom::new();
        match &self.key {
            IdentityKey::Rsa(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(|e| format!("RSA signing: {e}"))?;
                Ok((RSA_ENCRYPTION, out))
            }
            IdentityKey::EcdsaP256(key) => {
                let signature = key
                    .sign(&rng, message)
                    .map_err(|e| format!("ECDSA signing: {e}"))?;
                Ok((ECDSA_SHA256, signature.as_ref().to_vec()))
            }
        }
    }

    /// `content` in a DER SignedData with signed attributes (content type, SHA-256 digest), the
    /// device certificate and its chain.
    pub fn sign_cms(&self, content: &[u8]) -> Result<Vec<u8>, String> {
        let der = |e: cms::cert::x509::der::Error| e.to_string();
        let sha256 = AlgorithmIdentifierOwned {
            oid: ID_SHA256,
            parameters: None,
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let attribute = |oid: ObjectIdentifier, value: Any| -> Result<Attribute, String> {
            Ok(Attribute {
                oid,
                values: SetOfVec::try_from(vec![value]).map_err(der)?,
            })
        };
        let signed_attributes = SetOfVec::try_from(vec![
            attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_DATA).map_err(der)?)?,
            attribute(
                ID_MESSAGE_DIGEST,
                Any::new(Tag::OctetString, digest.as_ref()).map_err(der)?,
            )?,
        ])
        .map_err(der)?;
        let (signature_oid, signature) = self.sign(&signed_attributes.to_der().map_err(der)?)?;
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: self.certificate.tbs_certificate.issuer.clone(),
                serial_number: self.certificate.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs: Some(signed_attributes),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: signature_oid,
                parameters: None,
            },
            signature: OctetString::new(signature).map_err(der)?,
            unsigned_attrs: None,
        };
        let certificates = std::iter::once(&self.certificate)
            .chain(&self.chain)
            .map(|c| CertificateChoices::Certificate(c.clone()))
            .collect::<Vec<_>>();
        let signed = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(der)?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_DATA,
                econtent: Some(Any::new(Tag::OctetString, content).map_err(der)?),
            },
            certificates: Some(CertificateSet(
                SetOfVec::try_from(certificates).map_err(der)?,
            )),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).map_err(der)?),
        };
        ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&signed).map_err(der)?,
        }
        .to_der()
        .map_err(der)
    }
}

/// MachineInfo as Setup Assistant writes it: an XML plist of the given keys.
pub fn machine_info_plist(keys: &[(&str, plist::Value)]) -> Vec<u8> {
    let dictionary: plist::Dictionary = keys
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let mut out = Vec::new();
    // Writing to a Vec does not fail.
    let _ = plist::Value::Dictionary(dictionary).to_writer_xml(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::{Anchors, EnrollError, machine_info, signed};

    fn test_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Device CA");
        let certificate = params.self_signed(&key).expect("CA certificate");
        (rcgen::Issuer::new(params, key), certificate.pem())
    }

    fn device(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, rsa: bool) -> DeviceIdentity {
        let key = if rsa {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key")
        } else {
            rcgen::KeyPair::generate().expect("EC key")
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "00008110-000A1C2E3E08801E");
        let certificate = params.signed_by(&key, ca).expect("device certificate");
        DeviceIdentity::from_der(&key.serialize_der(), certificate.der(), &[]).expect("identity")
    }

    #[test]
    fn signed_machine_info_opens_and_chains_to_its_ca_only() {
        let (ca, ca_pem) = test_ca();
        let (_, other_pem) = test_ca();
        for rsa in [false, true] {
            let identity = device(&ca, rsa);
            let content = machine_info_plist(&[
                ("SERIAL", plist::Value::String("F2LXK1ABCD".into())),
                ("PRODUCT", plist::Value::String("iPhone15,2".into())),
                ("VERSION", plist::Value::String("22G86".into())),
                ("UDID", plist::Value::String("u".into())),
            ]);
            let envelope = identity.sign_cms(&content).expect("signed");
            let now = rustls_pki_types::UnixTime::now();
            let opened = signed::open(&envelope, None, now).expect("verifies");
            assert_eq!(opened.content, content);
            assert_eq!(
                machine_info::parse(&opened.content)
                    .expect("parses")
                    .product,
                "iPhone15,2"
            );
            let anchors = Anchors::from_pem(ca_pem.as_bytes()).expect("anchors");
            signed::open(&envelope, Some(&anchors), now).expect("chains to its CA");
            let other = Anchors::from_pem(other_pem.as_bytes()).expect("anchors");
            assert!(matches!(
                signed::open(&envelope, Some(&other), now),
                Err(EnrollError::Untrusted(_))
            ));
            // Change one byte of the signed plist: the digest no longer matches.
            let at = envelope
                .windows(10)
                .position(|w| w == b"F2LXK1ABCD")
                .expect("content is in the envelope");
            let mut tampered = envelope.clone();
            tampered[at] ^= 1;
            assert!(matches!(
                signed::open(&tampered, None, now),
                Err(EnrollError::Signature(_))
            ));
        }
    }
}
