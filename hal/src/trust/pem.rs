//! PEM block splitting and key-type naming, shared by the key and certificate parsers.

use p256::pkcs8::ObjectIdentifier;

use super::error::TrustError;

/// id-ecPublicKey (RFC 5480).
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / prime256v1 / NIST P-256.
pub(crate) const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

const BEGIN: &str = "-----BEGIN ";
const DASHES: &str = "-----";

/// One PEM block: its label and decoded body.
#[derive(Debug)]
pub(crate) struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every PEM block in `text`, in order. Text around blocks is ignored (openssl writes
/// `EC PARAMETERS` blocks and comments before keys). A block that is opened but does not
/// decode is an error: silently skipping it would hide a damaged file.
pub(crate) fn blocks(text: &str) -> Result<Vec<Block>, TrustError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from_begin = &rest[start..];
        let after_begin = &from_begin[BEGIN.len()..];
        let label_end = after_begin
            .find(DASHES)
            .ok_or_else(|| TrustError::PemInvalid("BEGIN line is not terminated by -----".into()))?;
        let label = &after_begin[..label_end];
        if label.contains('\n') {
            return Err(TrustError::PemInvalid("BEGIN line is not terminated by -----".into()));
        }
        let end_marker = format!("-----END {label}-----");
        let end = from_begin
            .find(&end_marker)
            .ok_or_else(|| TrustError::PemInvalid(format!("no \"{end_marker}\" line: the file is truncated")))?;
        let block_text = &from_begin[..end + end_marker.len()];
        let (decoded_label, der) = pem_rfc7468::decode_vec(block_text.as_bytes())
            .map_err(|e| TrustError::PemInvalid(format!("{label} block does not decode: {e}")))?;
        out.push(Block {
            label: decoded_label.to_string(),
            der,
        });
        rest = &from_begin[end + end_marker.len()..];
    }
    Ok(out)
}

/// PEM-encodes `der` under `label` with `\n` line endings.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    // Encoding only fails for labels with invalid characters; ours are constants.
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap_or_default()
}

/// A readable name for a key algorithm, for "wrong key type" messages.
pub(crate) fn algorithm_name(oid: ObjectIdentifier, parameters_oid: Option<ObjectIdentifier>) -> String {
    match oid.to_string().as_str() {
        "1.2.840.10045.2.1" => match parameters_oid.map(|p| p.to_string()).as_deref() {
            Some("1.2.840.10045.3.1.7") => "an EC P-256 key".into(),
            Some("1.3.132.0.34") => "an EC P-384 key".into(),
            Some("1.3.132.0.35") => "an EC P-521 key".into(),
            Some("1.3.132.0.10") => "an EC secp256k1 key".into(),
            Some(other) => format!("an EC key on curve {other}"),
            None => "an EC key without curve parameters".into(),
        },
        "1.2.840.113549.1.1.1" => "an RSA key".into(),
        "1.2.840.113549.1.1.10" => "an RSA-PSS key".into(),
        "1.3.101.110" => "an X25519 key".into(),
        "1.3.101.112" => "an Ed25519 key".into(),
        "1.3.101.113" => "an Ed448 key".into(),
        other => format!("a key of algorithm {other}"),
    }
}

/// What a PEM label holds, for "wrong key type" messages.
pub(crate) fn label_name(label: &str) -> String {
    match label {
        "PUBLIC KEY" => "a public key".into(),
        "PRIVATE KEY" | "EC PRIVATE KEY" => "a private key".into(),
        "RSA PRIVATE KEY" => "an RSA private key".into(),
        "RSA PUBLIC KEY" => "an RSA public key".into(),
        "CERTIFICATE" => "a certificate".into(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => "a certificate request".into(),
        "OPENSSH PRIVATE KEY" => "an OpenSSH private key".into(),
        other => format!("a PEM block labelled {other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_among_other_text() {
        let text = "comment\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\nmore\n\
                    -----BEGIN X-----\nAAEC\n-----END X-----\n";
        let b = blocks(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].label, "EC PARAMETERS");
        assert_eq!(b[1].label, "X");
        assert_eq!(b[1].der, vec![0, 1, 2]);
        assert!(blocks("nothing here").unwrap().is_empty());
    }

    #[test]
    fn truncated_and_garbled_blocks_are_errors() {
        let e = blocks("-----BEGIN PUBLIC KEY-----\nAAEC\n").unwrap_err();
        assert_eq!(e.code(), "pem_invalid");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = blocks("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n").unwrap_err();
        assert_eq!(e.code(), "pem_invalid");
        assert_eq!(blocks("-----BEGIN PUB").unwrap_err().code(), "pem_invalid");
    }

    #[test]
    fn encode_round_trips() {
        let pem = encode("CERTIFICATE", &[1, 2, 3, 4]);
        let b = blocks(&pem).unwrap();
        assert_eq!(b[0].label, "CERTIFICATE");
        assert_eq!(b[0].der, vec![1, 2, 3, 4]);
    }
}
