use std::time::Duration;

use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePublicKey;

use super::sim_ca::SimAttestationCa;
use super::*;

const SERIAL: u32 = 12345678;
const NEVER: u8 = 1;

fn spki(key: &SigningKey) -> Vec<u8> {
    key.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec()
}

struct Fixture {
    ca: SimAttestationCa,
    key: SigningKey,
    attestation: KeyAttestation,
}

fn fixture_with(pin: u8, touch: u8) -> Fixture {
    let ca = SimAttestationCa::generate().unwrap();
    let device = ca.issue_device(SERIAL).unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let certificate = device
        .attest(0x9E, &spki(&key), Firmware::new(5, 4, 3), pin, touch)
        .unwrap();
    Fixture {
        ca,
        key,
        attestation: KeyAttestation {
            certificate,
            intermediates: vec![device.certificate().to_vec()],
        },
    }
}

fn fixture() -> Fixture {
    fixture_with(NEVER, NEVER)
}

fn check(f: &Fixture, roots: &AttestationRoots, serial: u32, spki_der: &[u8]) -> Result<AttestedKey, AttestationError> {
    let serial = Serial::from(serial);
    AttestationRequirement {
        serial: &serial,
        spki_der,
    }
    .check(roots, &f.attestation, SystemTime::now())
}

#[test]
fn a_genuine_attestation_verifies_and_names_its_facts() {
    let f = fixture();
    let facts = check(&f, &f.ca.roots().unwrap(), SERIAL, &spki(&f.key)).unwrap();
    assert_eq!(facts.serial, Some(SERIAL));
    assert_eq!(facts.firmware, Some(Firmware::new(5, 4, 3)));
    assert_eq!(facts.pin_policy, Some(PinPolicy::Never));
    assert_eq!(facts.touch_policy, Some(TouchPolicy::Never));
    assert_eq!(facts.form_factor, Some(1));
    assert_eq!(facts.spki_der, spki(&f.key));
}

#[test]
fn an_unknown_root_is_refused() {
    let f = fixture();
    let other = SimAttestationCa::generate().unwrap();
    let e = check(&f, &other.roots().unwrap(), SERIAL, &spki(&f.key)).unwrap_err();
    assert_eq!(e.code(), "attestation_untrusted", "{e}");
    // Same subject name, other key: the signature check refuses it, not the name match.
    assert!(e.to_string().contains("signature"), "{e}");
}

#[test]
fn another_serial_and_another_key_are_refused() {
    let f = fixture();
    let roots = f.ca.roots().unwrap();
    let e = check(&f, &roots, SERIAL + 1, &spki(&f.key)).unwrap_err();
    assert_eq!(e.code(), "attestation_serial_mismatch");
    let other = SigningKey::random(&mut rand_core::OsRng);
    let e = check(&f, &roots, SERIAL, &spki(&other)).unwrap_err();
    assert_eq!(e.code(), "attestation_key_mismatch");
}

#[test]
fn policies_that_need_a_person_are_refused() {
    let f = fixture_with(2, NEVER);
    let e = check(&f, &f.ca.roots().unwrap(), SERIAL, &spki(&f.key)).unwrap_err();
    assert_eq!(e.code(), "attestation_pin_policy");
    assert!(e.to_string().contains("once"), "{e}");
    let f = fixture_with(NEVER, 3);
    let e = check(&f, &f.ca.roots().unwrap(), SERIAL, &spki(&f.key)).unwrap_err();
    assert_eq!(e.code(), "attestation_touch_policy");
}

#[test]
fn tampering_with_any_byte_of_the_chain_is_refused() {
    let f = fixture();
    let roots = f.ca.roots().unwrap();
    let key = spki(&f.key);
    // Flip one bit in every byte position of the attestation and the F9 certificate in
    // turn (bounded: every 7th byte): each result must be refused, never accepted.
    let mut tried = 0;
    for which in 0..2 {
        let len = if which == 0 {
            f.attestation.certificate.len()
        } else {
            f.attestation.intermediates[0].len()
        };
        for i in (0..len).step_by(7) {
            let mut a = f.attestation.clone();
            let bytes = if which == 0 {
                &mut a.certificate
            } else {
                &mut a.intermediates[0]
            };
            bytes[i] ^= 0x01;
            let serial = Serial::from(SERIAL);
            let r = AttestationRequirement {
                serial: &serial,
                spki_der: &key,
            }
            .check(&roots, &a, SystemTime::now());
            assert!(r.is_err(), "flipping byte {i} of cert {which} was accepted");
            tried += 1;
        }
    }
    assert!(tried > 50);
}

#[test]
fn a_chain_without_f9_or_out_of_date_is_refused() {
    let f = fixture();
    let roots = f.ca.roots().unwrap();
    let mut bare = f.attestation.clone();
    bare.intermediates.clear();
    assert_eq!(
        verify_attestation(&roots, &bare, SystemTime::now()).unwrap_err().code(),
        "attestation_malformed"
    );
    let later = SystemTime::now() + Duration::from_secs(30 * 365 * 86_400);
    let e = verify_attestation(&roots, &f.attestation, later).unwrap_err();
    assert_eq!(e.code(), "attestation_untrusted");
    assert!(e.to_string().contains("validity"), "{e}");
    // An attestation presented as its own F9 certificate: not issued by itself.
    let mut selfish = f.attestation.clone();
    selfish.intermediates = vec![f.attestation.certificate.clone()];
    assert!(verify_attestation(&roots, &selfish, SystemTime::now()).is_err());
    // Garbage never panics.
    for junk in [&b""[..], b"\x30", b"\x30\x82\xff\xff", &[0u8; 300]] {
        let a = KeyAttestation {
            certificate: junk.to_vec(),
            intermediates: vec![junk.to_vec()],
        };
        assert_eq!(
            verify_attestation(&roots, &a, SystemTime::now()).unwrap_err().code(),
            "attestation_malformed"
        );
    }
}

#[test]
fn the_f9_certificate_of_another_device_cannot_vouch() {
    // A genuine F9 certificate from the same CA, but the attestation was signed by another
    // device's F9 key: the signature check refuses it.
    let f = fixture();
    let other_device = f.ca.issue_device(SERIAL).unwrap();
    let mut a = f.attestation.clone();
    a.intermediates = vec![other_device.certificate().to_vec()];
    let e = verify_attestation(&f.ca.roots().unwrap(), &a, SystemTime::now()).unwrap_err();
    assert_eq!(e.code(), "attestation_untrusted");
}

#[test]
fn roots_parse_from_pem_and_report_fingerprints() {
    let ca = SimAttestationCa::from_seed(1).unwrap();
    let two = format!("{}{}", ca.root_pem(), SimAttestationCa::generate().unwrap().root_pem());
    let roots = AttestationRoots::from_pem(&two).unwrap();
    assert_eq!(roots.fingerprints().len(), 2);
    assert_eq!(roots.fingerprints()[0], hex::encode(Sha256::digest(ca.root_der())));
    assert_eq!(AttestationRoots::from_pem("junk").unwrap_err().code(), "pem_invalid");
    assert!(AttestationRoots::from_ders(std::iter::empty()).is_err());
}

/// Real Yubico roots and F9 certificates are RSA: the chain verifier must check
/// sha256WithRSAEncryption signatures too.
#[test]
fn an_rsa_root_is_verified() {
    use rsa::pkcs1v15::SigningKey as RsaSigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use std::str::FromStr;
    use x509_cert::certificate::{TbsCertificate, Version};
    use x509_cert::der::asn1::{BitString, Null};
    use x509_cert::name::Name;
    use x509_cert::spki::{AlgorithmIdentifierOwned, EncodePublicKey as _, SubjectPublicKeyInfoOwned};

    let rsa_key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let signer = RsaSigningKey::<Sha256>::new(rsa_key.clone());
    let alg = AlgorithmIdentifierOwned {
        oid: OID_SHA256_WITH_RSA,
        parameters: Some(x509_cert::der::Any::from(Null)),
    };
    let root_name = Name::from_str("CN=Test RSA PIV Root").unwrap();
    let sim = SimAttestationCa::generate().unwrap();
    let validity = Certificate::from_der(sim.root_der()).unwrap().tbs_certificate.validity;
    let sign = |tbs: TbsCertificate| {
        let sig = signer.sign(&tbs.to_der().unwrap()).to_vec();
        Certificate {
            tbs_certificate: tbs,
            signature_algorithm: alg.clone(),
            signature: BitString::from_bytes(&sig).unwrap(),
        }
        .to_der()
        .unwrap()
    };
    let rsa_spki =
        SubjectPublicKeyInfoOwned::from_der(rsa_key.to_public_key().to_public_key_der().unwrap().as_bytes()).unwrap();
    let root = sign(TbsCertificate {
        version: Version::V3,
        serial_number: x509_cert::serial_number::SerialNumber::new(&[1]).unwrap(),
        signature: alg.clone(),
        issuer: root_name.clone(),
        validity,
        subject: root_name.clone(),
        subject_public_key_info: rsa_spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: None,
    });
    // The device F9 certificate of a P-256 device, re-issued by the RSA root.
    let device = sim.issue_device(SERIAL).unwrap();
    let mut f9 = Certificate::from_der(device.certificate()).unwrap().tbs_certificate;
    f9.issuer = root_name;
    f9.signature = alg.clone();
    let f9 = sign(f9);
    let key = SigningKey::random(&mut rand_core::OsRng);
    let attestation = KeyAttestation {
        certificate: device
            .attest(0x9E, &spki(&key), Firmware::new(5, 7, 1), NEVER, NEVER)
            .unwrap(),
        intermediates: vec![f9],
    };
    let roots = AttestationRoots::from_ders([root.as_slice()]).unwrap();
    let facts = verify_attestation(&roots, &attestation, SystemTime::now()).unwrap();
    assert_eq!(facts.serial, Some(SERIAL));
    // And a tampered RSA signature is refused.
    let mut bad = attestation.clone();
    let n = bad.intermediates[0].len();
    bad.intermediates[0][n - 5] ^= 0x40;
    assert_eq!(
        verify_attestation(&roots, &bad, SystemTime::now()).unwrap_err().code(),
        "attestation_untrusted"
    );
}
