//! The two CTAP2 commands the backend needs, as CBOR (via `ciborium`):
//! `authenticatorGetInfo` (0x04) and `authenticatorGetAssertion` (0x02) with `up=false`, the
//! proof of possession of a provisioned credential without a touch.
//!
//! Requests are encoded in CTAP2 canonical form (integer keys ascending, text keys by length
//! then bytes). Answers are parsed defensively: any malformed CBOR, wrong type or missing
//! member is a [`ErrorKind::Protocol`] error, never a panic.

use std::collections::BTreeMap;

use ciborium::value::{Integer, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// CTAP2 command: make credential (needs a touch on every real key).
pub const MAKE_CREDENTIAL: u8 = 0x01;
/// CTAP2 command: get assertion.
pub const GET_ASSERTION: u8 = 0x02;
/// CTAP2 command: get info.
pub const GET_INFO: u8 = 0x04;

/// The relying-party id keyfloat's credentials are made for. It is not a web origin: it only
/// scopes the credential, so a key's keyfloat credential is distinct from its web logins.
pub const DEFAULT_RP_ID: &str = "keyfloat.license";

/// authenticatorData flag: user present.
pub const FLAG_UP: u8 = 0x01;
/// authenticatorData flag: user verified.
pub const FLAG_UV: u8 = 0x04;
/// authenticatorData flag: attested credential data included (never in an assertion).
pub const FLAG_AT: u8 = 0x40;
/// authenticatorData flag: extensions included.
pub const FLAG_ED: u8 = 0x80;

/// CTAP2 status codes that mean something to us.
pub mod status {
    /// Success.
    pub const OK: u8 = 0x00;
    /// Invalid CBOR.
    pub const INVALID_CBOR: u8 = 0x12;
    /// The credential is not on this key.
    pub const NO_CREDENTIALS: u8 = 0x2E;
    /// The user did not touch in time.
    pub const USER_ACTION_TIMEOUT: u8 = 0x2F;
    /// The operation was refused.
    pub const OPERATION_DENIED: u8 = 0x27;
    /// A PIN is required.
    pub const PIN_REQUIRED: u8 = 0x36;
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg.into())
}

fn int(n: u8) -> Value {
    Value::Integer(Integer::from(n))
}

fn encode(command: u8, map: Vec<(Value, Value)>) -> Result<Vec<u8>> {
    let mut out = vec![command];
    ciborium::ser::into_writer(&Value::Map(map), &mut out)
        .map_err(|e| Error::new(ErrorKind::Other, format!("CBOR encoding failed: {e}")))?;
    Ok(out)
}

/// `authenticatorGetInfo` request bytes.
pub fn get_info_request() -> Vec<u8> {
    vec![GET_INFO]
}

/// `authenticatorGetAssertion` request: `rp_id`, the 32-byte `client_data_hash`, one allowed
/// credential, options `{up: false}`.
pub fn get_assertion_request(rp_id: &str, client_data_hash: &[u8], credential_id: &[u8]) -> Result<Vec<u8>> {
    if client_data_hash.len() != 32 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "a FIDO challenge (clientDataHash) must be 32 bytes, got {}",
                client_data_hash.len()
            ),
        ));
    }
    let descriptor = Value::Map(vec![
        (Value::Text("id".into()), Value::Bytes(credential_id.to_vec())),
        (Value::Text("type".into()), Value::Text("public-key".into())),
    ]);
    encode(
        GET_ASSERTION,
        vec![
            (int(1), Value::Text(rp_id.into())),
            (int(2), Value::Bytes(client_data_hash.to_vec())),
            (int(3), Value::Array(vec![descriptor])),
            (int(5), Value::Map(vec![(Value::Text("up".into()), Value::Bool(false))])),
        ],
    )
}

/// `authenticatorMakeCredential` request: a new ES256 (P-256) credential for `rp_id` and
/// `user_id`, over the 32-byte `client_data_hash` (the attestation challenge). The key
/// waits for a touch (user presence) before answering.
pub fn make_credential_request(rp_id: &str, client_data_hash: &[u8], user_id: &[u8]) -> Result<Vec<u8>> {
    if client_data_hash.len() != 32 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("clientDataHash must be 32 bytes, got {}", client_data_hash.len()),
        ));
    }
    let es256 = Value::Map(vec![
        (Value::Text("alg".into()), Value::Integer(Integer::from(-7))),
        (Value::Text("type".into()), Value::Text("public-key".into())),
    ]);
    encode(
        MAKE_CREDENTIAL,
        vec![
            (int(1), Value::Bytes(client_data_hash.to_vec())),
            (
                int(2),
                Value::Map(vec![(Value::Text("id".into()), Value::Text(rp_id.into()))]),
            ),
            (
                int(3),
                Value::Map(vec![
                    (Value::Text("id".into()), Value::Bytes(user_id.to_vec())),
                    (Value::Text("name".into()), Value::Text("keyfloat".into())),
                ]),
            ),
            (int(4), Value::Array(vec![es256])),
        ],
    )
}

/// What `authenticatorMakeCredential` returns: the attestation object's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// Attestation statement format (`packed`, `fido-u2f`, `none`…).
    pub fmt: String,
    /// authenticatorData with the attested credential data.
    pub auth_data: Vec<u8>,
    /// `packed`: the COSE algorithm of `sig` (-7 = ES256).
    pub alg: Option<i64>,
    /// `packed`: signature over `auth_data ‖ clientDataHash`.
    pub sig: Vec<u8>,
    /// `packed`: attestation certificate first, then its CA chain (DER).
    pub x5c: Vec<Vec<u8>>,
}

/// Parses an `authenticatorMakeCredential` answer (status ‖ CBOR).
pub fn parse_make_credential(response: &[u8]) -> Result<MadeCredential> {
    let map = decode_map(check_status(response)?)?;
    let fmt = match member(&map, 1) {
        Some(Value::Text(t)) => t.clone(),
        _ => return Err(protocol("makeCredential answer without fmt")),
    };
    let auth_data = match member(&map, 2) {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return Err(protocol("makeCredential answer without authenticatorData")),
    };
    let stmt = match member(&map, 3) {
        Some(Value::Map(m)) => m.clone(),
        _ => return Err(protocol("makeCredential answer without attStmt")),
    };
    let alg = match text_member(&stmt, "alg") {
        Some(Value::Integer(i)) => i64::try_from(*i).ok(),
        _ => None,
    };
    let sig = match text_member(&stmt, "sig") {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Vec::new(),
    };
    let x5c = match text_member(&stmt, "x5c") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|c| match c {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(protocol("x5c member is not a byte string")),
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
        Some(_) => return Err(protocol("x5c is not an array")),
    };
    Ok(MadeCredential {
        fmt,
        auth_data,
        alg,
        sig,
        x5c,
    })
}

/// The credential a makeCredential created (authenticatorData's attested credential data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedCredentialData {
    /// The model id.
    pub aaguid: [u8; 16],
    /// The credential id to ask for assertions.
    pub credential_id: Vec<u8>,
    /// The credential's P-256 public key.
    pub public_key: p256::PublicKey,
}

/// Parses the attested credential data of a makeCredential's authenticatorData.
pub fn parse_attested_credential(auth_data: &[u8]) -> Result<AttestedCredentialData> {
    let header = parse_auth_data(auth_data)?;
    if header.flags & FLAG_AT == 0 {
        return Err(protocol("authenticatorData carries no attested credential data"));
    }
    let rest = &auth_data[37..];
    let aaguid: [u8; 16] = rest
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| protocol("attested credential data is truncated"))?;
    let len = rest
        .get(16..18)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| protocol("attested credential data is truncated"))?;
    let credential_id = rest
        .get(18..18 + len)
        .ok_or_else(|| protocol("credential id is truncated"))?
        .to_vec();
    let mut cose = &rest[18 + len..];
    let key: Value = ciborium::de::from_reader(&mut cose).map_err(|e| protocol(format!("COSE key: {e}")))?;
    let Value::Map(key) = key else {
        return Err(protocol("COSE key is not a map"));
    };
    let by = |k: i64| {
        key.iter()
            .find(|(kk, _)| matches!(kk, Value::Integer(i) if i128::from(*i) == i128::from(k)))
            .map(|(_, v)| v)
    };
    let is_int =
        |v: Option<&Value>, want: i64| matches!(v, Some(Value::Integer(i)) if i128::from(*i) == i128::from(want));
    // kty EC2 (2), alg ES256 (-7), crv P-256 (1).
    if !is_int(by(1), 2) || !is_int(by(3), -7) || !is_int(by(-1), 1) {
        return Err(protocol("credential key is not an ES256 P-256 key"));
    }
    let (Some(Value::Bytes(x)), Some(Value::Bytes(y))) = (by(-2), by(-3)) else {
        return Err(protocol("COSE key without coordinates"));
    };
    if x.len() != 32 || y.len() != 32 {
        return Err(protocol("COSE key coordinates are not 32 bytes"));
    }
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    let public_key = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| protocol("credential key is not on P-256"))?;
    Ok(AttestedCredentialData {
        aaguid,
        credential_id,
        public_key,
    })
}

/// Splits a CTAP2 answer into status and CBOR, mapping a non-zero status to an error.
pub fn check_status(response: &[u8]) -> Result<&[u8]> {
    let (&code, body) = response.split_first().ok_or_else(|| protocol("empty CTAP2 response"))?;
    match code {
        status::OK => Ok(body),
        status::NO_CREDENTIALS => Err(Error::new(
            ErrorKind::NotPresent,
            "the FIDO key does not hold the provisioned credential",
        )),
        status::USER_ACTION_TIMEOUT => Err(Error::new(ErrorKind::Timeout, "the FIDO key waited for a touch")),
        status::PIN_REQUIRED => Err(Error::new(ErrorKind::Unsupported, "the FIDO key requires a PIN")),
        c => Err(protocol(format!("CTAP2 error 0x{c:02x}"))),
    }
}

fn decode_map(body: &[u8]) -> Result<Vec<(Value, Value)>> {
    let v: Value = ciborium::de::from_reader(body).map_err(|e| protocol(format!("malformed CBOR from key: {e}")))?;
    match v {
        Value::Map(m) => Ok(m),
        _ => Err(protocol("CTAP2 response is not a CBOR map")),
    }
}

fn member(map: &[(Value, Value)], key: u8) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == i128::from(key)))
        .map(|(_, v)| v)
}

fn text_member<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

/// What `authenticatorGetInfo` tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthenticatorInfo {
    /// Protocol versions, e.g. `FIDO_2_0`.
    pub versions: Vec<String>,
    /// Model identifier (16 bytes).
    pub aaguid: Vec<u8>,
    /// Options such as `rk`, `up`, `uv`, `clientPin`.
    pub options: BTreeMap<String, bool>,
    /// Largest message the key accepts.
    pub max_msg_size: Option<u64>,
    /// Firmware version (CTAP 2.1 member 0x0E).
    pub firmware_version: Option<u64>,
}

/// Parses an `authenticatorGetInfo` answer (status ‖ CBOR).
pub fn parse_get_info(response: &[u8]) -> Result<AuthenticatorInfo> {
    let map = decode_map(check_status(response)?)?;
    let versions = match member(&map, 1) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_text()
                    .map(str::to_string)
                    .ok_or_else(|| protocol("GetInfo version is not text"))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(protocol("GetInfo without versions")),
    };
    let aaguid = match member(&map, 3) {
        Some(Value::Bytes(b)) if b.len() == 16 => b.clone(),
        _ => return Err(protocol("GetInfo without a 16-byte aaguid")),
    };
    let mut options = BTreeMap::new();
    if let Some(Value::Map(m)) = member(&map, 4) {
        for (k, v) in m {
            if let (Value::Text(k), Value::Bool(b)) = (k, v) {
                options.insert(k.clone(), *b);
            }
        }
    }
    let uint = |key| match member(&map, key) {
        Some(Value::Integer(i)) => u64::try_from(*i).ok(),
        _ => None,
    };
    Ok(AuthenticatorInfo {
        versions,
        aaguid,
        options,
        max_msg_size: uint(5),
        firmware_version: uint(0x0E),
    })
}

/// What `authenticatorGetAssertion` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// Credential id the key used (when it says).
    pub credential_id: Option<Vec<u8>>,
    /// authenticatorData: rpIdHash ‖ flags ‖ signCount ‖ ...
    pub auth_data: Vec<u8>,
    /// DER ECDSA signature over `auth_data ‖ clientDataHash`.
    pub signature: Vec<u8>,
}

/// Parses an `authenticatorGetAssertion` answer (status ‖ CBOR).
pub fn parse_get_assertion(response: &[u8]) -> Result<Assertion> {
    let map = decode_map(check_status(response)?)?;
    let credential_id = match member(&map, 1) {
        Some(Value::Map(m)) => match text_member(m, "id") {
            Some(Value::Bytes(b)) => Some(b.clone()),
            _ => return Err(protocol("assertion credential without id")),
        },
        None => None,
        Some(_) => return Err(protocol("assertion credential is not a map")),
    };
    let auth_data = match member(&map, 2) {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return Err(protocol("assertion without authenticatorData")),
    };
    let signature = match member(&map, 3) {
        Some(Value::Bytes(b)) if !b.is_empty() => b.clone(),
        _ => return Err(protocol("assertion without signature")),
    };
    Ok(Assertion {
        credential_id,
        auth_data,
        signature,
    })
}

/// The first 37 bytes of authenticatorData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthDataHeader {
    /// SHA-256 of the rp id.
    pub rp_id_hash: [u8; 32],
    /// Flags.
    pub flags: u8,
    /// Signature counter.
    pub sign_count: u32,
}

/// Parses authenticatorData's fixed header.
pub fn parse_auth_data(auth_data: &[u8]) -> Result<AuthDataHeader> {
    if auth_data.len() < 37 {
        return Err(protocol(format!(
            "authenticatorData of {} bytes, expected at least 37",
            auth_data.len()
        )));
    }
    let mut rp_id_hash = [0u8; 32];
    rp_id_hash.copy_from_slice(&auth_data[..32]);
    Ok(AuthDataHeader {
        rp_id_hash,
        flags: auth_data[32],
        sign_count: u32::from_be_bytes([auth_data[33], auth_data[34], auth_data[35], auth_data[36]]),
    })
}

/// Checks an assertion made for `rp_id` with the credential `credential_id`: right rp id
/// hash, no attested-credential data, same credential.
pub fn check_assertion(assertion: &Assertion, rp_id: &str, credential_id: &[u8]) -> Result<AuthDataHeader> {
    let header = parse_auth_data(&assertion.auth_data)?;
    if header.rp_id_hash[..] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(protocol(format!("assertion is not for the relying party {rp_id:?}")));
    }
    if header.flags & FLAG_AT != 0 {
        return Err(protocol("assertion carries attested credential data"));
    }
    if header.flags & FLAG_ED == 0 && assertion.auth_data.len() != 37 {
        return Err(protocol("authenticatorData has trailing bytes"));
    }
    if assertion.credential_id.as_deref().is_some_and(|id| id != credential_id) {
        return Err(protocol("the key answered with another credential"));
    }
    Ok(header)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn get_assertion_request_known_answer() {
        let req = get_assertion_request("keyfloat.license", &[0xAB; 32], &[1, 2, 3]).unwrap();
        let mut expected = vec![0x02, 0xA4];
        expected.extend_from_slice(&[0x01, 0x70]);
        expected.extend_from_slice(b"keyfloat.license");
        expected.extend_from_slice(&[0x02, 0x58, 0x20]);
        expected.extend_from_slice(&[0xAB; 32]);
        expected.extend_from_slice(&[0x03, 0x81, 0xA2, 0x62, b'i', b'd', 0x43, 1, 2, 3]);
        expected.extend_from_slice(&[0x64, b't', b'y', b'p', b'e', 0x6A]);
        expected.extend_from_slice(b"public-key");
        expected.extend_from_slice(&[0x05, 0xA1, 0x62, b'u', b'p', 0xF4]);
        assert_eq!(req, expected);
        assert_eq!(
            get_assertion_request("x", &[0; 31], &[1]).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }

    fn encode_response(map: Vec<(Value, Value)>) -> Vec<u8> {
        let mut v = encode(0, map).unwrap();
        v[0] = status::OK;
        v
    }

    #[test]
    fn parses_get_info() {
        let resp = encode_response(vec![
            (
                int(1),
                Value::Array(vec![Value::Text("FIDO_2_0".into()), Value::Text("U2F_V2".into())]),
            ),
            (int(3), Value::Bytes(vec![7; 16])),
            (int(4), Value::Map(vec![(Value::Text("rk".into()), Value::Bool(true))])),
            (int(5), Value::Integer(1200.into())),
            (int(0x0E), Value::Integer(328_707.into())),
        ]);
        let info = parse_get_info(&resp).unwrap();
        assert_eq!(info.versions, ["FIDO_2_0", "U2F_V2"]);
        assert_eq!(info.options.get("rk"), Some(&true));
        assert_eq!(info.max_msg_size, Some(1200));
        assert_eq!(info.firmware_version, Some(328_707));
        assert_eq!(parse_get_info(&[0x01]).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse_get_info(&[]).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse_get_info(&[0, 0xA1]).unwrap_err().kind(), ErrorKind::Protocol);
    }

    fn auth_data(rp: &str, flags: u8) -> Vec<u8> {
        let mut a = Sha256::digest(rp.as_bytes()).to_vec();
        a.push(flags);
        a.extend_from_slice(&5u32.to_be_bytes());
        a
    }

    #[test]
    fn parses_and_checks_assertions() {
        let resp = encode_response(vec![
            (
                int(1),
                Value::Map(vec![
                    (Value::Text("id".into()), Value::Bytes(vec![1, 2, 3])),
                    (Value::Text("type".into()), Value::Text("public-key".into())),
                ]),
            ),
            (int(2), Value::Bytes(auth_data(DEFAULT_RP_ID, 0))),
            (int(3), Value::Bytes(vec![0x30, 0x06, 2, 1, 1, 2, 1, 1])),
        ]);
        let a = parse_get_assertion(&resp).unwrap();
        let h = check_assertion(&a, DEFAULT_RP_ID, &[1, 2, 3]).unwrap();
        assert_eq!(h.sign_count, 5);
        assert_eq!(h.flags & FLAG_UP, 0);
        assert!(check_assertion(&a, "example.com", &[1, 2, 3]).is_err());
        assert!(check_assertion(&a, DEFAULT_RP_ID, &[9]).is_err());
        let mut at = a.clone();
        at.auth_data = auth_data(DEFAULT_RP_ID, FLAG_AT);
        assert!(check_assertion(&at, DEFAULT_RP_ID, &[1, 2, 3]).is_err());
        at.auth_data = auth_data(DEFAULT_RP_ID, 0)[..36].to_vec();
        assert!(check_assertion(&at, DEFAULT_RP_ID, &[1, 2, 3]).is_err());
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(
            check_status(&[status::NO_CREDENTIALS]).unwrap_err().kind(),
            ErrorKind::NotPresent
        );
        assert_eq!(
            check_status(&[status::USER_ACTION_TIMEOUT]).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        assert_eq!(check_status(&[0x7F]).unwrap_err().kind(), ErrorKind::Protocol);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(0u8.., 0..300)) {
            let _ = parse_get_info(&bytes);
            let _ = parse_get_assertion(&bytes);
            let _ = parse_auth_data(&bytes);
            let mut ok = vec![0u8];
            ok.extend_from_slice(&bytes);
            let _ = parse_get_info(&ok);
            if let Ok(a) = parse_get_assertion(&ok) {
                let _ = check_assertion(&a, DEFAULT_RP_ID, &[]);
            }
            let _ = parse_make_credential(&ok);
            let _ = parse_attested_credential(&bytes);
            // Attested credential data with the AT flag set and arbitrary bytes after it.
            let mut auth = vec![0u8; 32];
            auth.push(FLAG_AT | FLAG_UP);
            auth.extend_from_slice(&[0, 0, 0, 1]);
            auth.extend_from_slice(&bytes);
            let _ = parse_attested_credential(&auth);
        }
    }
}
