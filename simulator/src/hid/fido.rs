//! The FIDO interface: CTAPHID packets and the CTAP2 commands keyfloat uses.

use ciborium::value::{Integer, Value};
use keyfloat_hal::backend::hid::ctap2;
use keyfloat_hal::backend::hid::ctaphid::{self, cmd, err, Packet, Reassembler, BROADCAST_CID};
use keyfloat_hal::backend::sim::{SimAttestation, SimKeySpec};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::Signature;
use sha2::{Digest, Sha256};

use super::{credential_id, Device, Kind};

fn queue(d: &mut Device, cid: u32, command: u8, payload: &[u8]) {
    if let Ok(packets) = ctaphid::fragment(cid, command, payload) {
        d.fido.out.extend(packets);
    }
}

pub(super) fn fido_write(d: &mut Device, packet: &[u8]) {
    let Ok(p) = ctaphid::parse_packet(packet) else { return };
    let cid = p.cid();
    match p {
        Packet::Init {
            cmd: cmd::INIT,
            data,
            bcnt,
            ..
        } => {
            if bcnt != 8 {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_LEN]);
            }
            d.fido.assembling = None;
            let new_cid = if cid == BROADCAST_CID {
                d.fido.next_cid += 1;
                let c = 0x0100_0000 | d.fido.next_cid;
                d.fido.channels.push(c);
                c
            } else if d.fido.channels.contains(&cid) {
                cid
            } else {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_CHANNEL]);
            };
            let fw = match &d.kind {
                Kind::YubiKey { spec, .. } => spec.firmware,
                Kind::Dongle { .. } => keyfloat_hal::Firmware::new(0, 0, 0),
            };
            let mut payload = data[..8].to_vec();
            payload.extend_from_slice(&new_cid.to_be_bytes());
            // protocol 2, version, capabilities: WINK | CBOR | NMSG
            payload.extend_from_slice(&[2, fw.major, fw.minor, fw.patch, 0x01 | 0x04 | 0x08]);
            queue(d, cid, cmd::INIT, &payload);
        }
        Packet::Init { .. } => {
            if cid == BROADCAST_CID || !d.fido.channels.contains(&cid) {
                return queue(d, cid, cmd::ERROR, &[err::INVALID_CHANNEL]);
            }
            if d.channel_busy || d.fido.assembling.as_ref().is_some_and(|r| r.cid() != cid) {
                return queue(d, cid, cmd::ERROR, &[err::CHANNEL_BUSY]);
            }
            match Reassembler::start(&p) {
                Ok(Some(r)) => d.fido.assembling = Some(r),
                _ => return queue(d, cid, cmd::ERROR, &[err::INVALID_LEN]),
            }
            finish_if_complete(d);
        }
        Packet::Cont { .. } => {
            let Some(r) = d.fido.assembling.as_mut().filter(|r| r.cid() == cid) else {
                return; // a stray CONT packet is ignored
            };
            if r.push(&p).is_err() {
                d.fido.assembling = None;
                return queue(d, cid, cmd::ERROR, &[err::INVALID_SEQ]);
            }
            finish_if_complete(d);
        }
    }
}

fn finish_if_complete(d: &mut Device) {
    if !d.fido.assembling.as_ref().is_some_and(Reassembler::is_complete) {
        return;
    }
    let Some(r) = d.fido.assembling.take() else { return };
    let cid = r.cid();
    let (command, payload) = r.finish();
    match command {
        cmd::PING => queue(d, cid, cmd::PING, &payload),
        cmd::WINK => queue(d, cid, cmd::WINK, &[]),
        cmd::CBOR => {
            for _ in 0..d.keepalives {
                queue(d, cid, cmd::KEEPALIVE, &[1]);
            }
            let answer = ctap2_answer(d, &payload);
            queue(d, cid, cmd::CBOR, &answer);
        }
        _ => queue(d, cid, cmd::ERROR, &[err::INVALID_CMD]),
    }
}

fn int(n: u8) -> Value {
    Value::Integer(Integer::from(n))
}

fn cbor_ok(map: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = vec![ctap2::status::OK];
    if ciborium::ser::into_writer(&Value::Map(map), &mut out).is_err() {
        return vec![0x7F];
    }
    out
}

fn get(map: &[(Value, Value)], key: u8) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == i128::from(key)))
        .map(|(_, v)| v)
}

/// CTAP2 status: missing parameter.
const MISSING_PARAMETER: u8 = 0x14;
/// CTAP1 status: invalid command.
const INVALID_COMMAND: u8 = 0x01;

fn ctap2_answer(d: &mut Device, request: &[u8]) -> Vec<u8> {
    let Kind::YubiKey { spec, .. } = &d.kind else {
        return vec![INVALID_COMMAND];
    };
    let Some((&command, body)) = request.split_first() else {
        return vec![INVALID_COMMAND];
    };
    match command {
        ctap2::GET_INFO => get_info(spec),
        ctap2::GET_ASSERTION => get_assertion(d, body),
        ctap2::MAKE_CREDENTIAL => make_credential(d, body),
        _ => vec![INVALID_COMMAND],
    }
}

/// `authenticatorGetInfo`: versions, the virtual model id, options and the firmware.
fn get_info(spec: &SimKeySpec) -> Vec<u8> {
    cbor_ok(vec![
        (
            int(1),
            Value::Array(vec![
                Value::Text("U2F_V2".into()),
                Value::Text("FIDO_2_0".into()),
                Value::Text("FIDO_2_1".into()),
            ]),
        ),
        (int(3), Value::Bytes(b"keyfloat-sim-hid".to_vec())),
        (
            int(4),
            Value::Map(vec![
                (Value::Text("rk".into()), Value::Bool(true)),
                (Value::Text("up".into()), Value::Bool(true)),
                (Value::Text("plat".into()), Value::Bool(false)),
            ]),
        ),
        (int(5), Value::Integer(1200.into())),
        (
            int(0x0E),
            Value::Integer(
                (u32::from(spec.firmware.major) << 16
                    | u32::from(spec.firmware.minor) << 8
                    | u32::from(spec.firmware.patch))
                .into(),
            ),
        ),
    ])
}

/// `authenticatorGetAssertion` with `up=false` for keyfloat's credential: signed by the
/// key's own P-256 key (over the wrong message when corrupt).
fn get_assertion(d: &mut Device, body: &[u8]) -> Vec<u8> {
    let Kind::YubiKey { spec, .. } = &d.kind else {
        return vec![INVALID_COMMAND];
    };
    let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(body) else {
        return vec![ctap2::status::INVALID_CBOR];
    };
    let (Some(Value::Text(rp_id)), Some(Value::Bytes(cdh)), Some(Value::Array(allow))) =
        (get(&map, 1), get(&map, 2), get(&map, 3))
    else {
        return vec![MISSING_PARAMETER];
    };
    let up = match get(&map, 5) {
        Some(Value::Map(opts)) => opts
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == "up"))
            .is_none_or(|(_, v)| !matches!(v, Value::Bool(false))),
        _ => true,
    };
    let ours = credential_id(spec);
    let allowed = allow.iter().any(|c| match c {
        Value::Map(m) => m
            .iter()
            .any(|(k, v)| matches!(k, Value::Text(t) if t == "id") && *v == Value::Bytes(ours.clone())),
        _ => false,
    });
    // The credential exists only for keyfloat's relying party.
    if !allowed || rp_id != ctap2::DEFAULT_RP_ID {
        return vec![ctap2::status::NO_CREDENTIALS];
    }
    if up {
        return vec![ctap2::status::USER_ACTION_TIMEOUT]; // nobody touches a virtual key
    }
    d.fido.sign_count = d.fido.sign_count.wrapping_add(1);
    let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(0x00); // up=false: no UP, no UV
    auth_data.extend_from_slice(&d.fido.sign_count.to_be_bytes());
    let mut message = auth_data.clone();
    message.extend_from_slice(cdh);
    let signature: Signature = if d.corrupt {
        spec.signing_key.sign(b"not the challenge")
    } else {
        spec.signing_key.sign(&message)
    };
    cbor_ok(vec![
        (
            int(1),
            Value::Map(vec![
                (Value::Text("id".into()), Value::Bytes(ours)),
                (Value::Text("type".into()), Value::Text("public-key".into())),
            ]),
        ),
        (int(2), Value::Bytes(auth_data)),
        (int(3), Value::Bytes(signature.to_der().as_bytes().to_vec())),
    ])
}

/// The virtual model id.
const SIM_AAGUID: [u8; 16] = *b"keyfloat-sim-hid";

/// `authenticatorMakeCredential` for keyfloat's relying party: the credential is the key's
/// own P-256 key (the one assertions use). With a device attester (keys generated on a
/// genuine device), a `packed` attestation signed by it with its certificate in `x5c`;
/// without one, format `none`.
fn make_credential(d: &mut Device, body: &[u8]) -> Vec<u8> {
    let Kind::YubiKey { spec, .. } = &d.kind else {
        return vec![INVALID_COMMAND];
    };
    let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(body) else {
        return vec![ctap2::status::INVALID_CBOR];
    };
    let (Some(Value::Bytes(cdh)), Some(Value::Map(rp))) = (get(&map, 1), get(&map, 2)) else {
        return vec![MISSING_PARAMETER];
    };
    let rp_id = rp.iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Text(v)) if k == "id" => Some(v.clone()),
        _ => None,
    });
    let Some(rp_id) = rp_id else {
        return vec![MISSING_PARAMETER];
    };
    if d.fido.touches == 0 {
        return vec![ctap2::status::USER_ACTION_TIMEOUT];
    }
    d.fido.touches -= 1;
    d.fido.sign_count = d.fido.sign_count.wrapping_add(1);
    let id = credential_id(spec);
    let point = spec.verifying_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return vec![INVALID_COMMAND];
    };
    let cose = Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer(2.into())),
        (Value::Integer(3.into()), Value::Integer((-7).into())),
        (Value::Integer((-1).into()), Value::Integer(1.into())),
        (Value::Integer((-2).into()), Value::Bytes(x.to_vec())),
        (Value::Integer((-3).into()), Value::Bytes(y.to_vec())),
    ]);
    let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(ctap2::FLAG_UP | ctap2::FLAG_AT);
    auth_data.extend_from_slice(&d.fido.sign_count.to_be_bytes());
    auth_data.extend_from_slice(&SIM_AAGUID);
    auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
    auth_data.extend_from_slice(&id);
    if ciborium::ser::into_writer(&cose, &mut auth_data).is_err() {
        return vec![INVALID_COMMAND];
    }
    let (fmt, stmt) = match &spec.attestation {
        Some(SimAttestation::Device(attester)) => {
            let mut message = auth_data.clone();
            message.extend_from_slice(cdh);
            let sig = if d.corrupt {
                attester.sign(b"not the credential")
            } else {
                attester.sign(&message)
            };
            (
                "packed",
                vec![
                    (Value::Text("alg".into()), Value::Integer((-7).into())),
                    (Value::Text("sig".into()), Value::Bytes(sig)),
                    (
                        Value::Text("x5c".into()),
                        Value::Array(vec![Value::Bytes(attester.certificate().to_vec())]),
                    ),
                ],
            )
        }
        _ => ("none", Vec::new()),
    };
    cbor_ok(vec![
        (int(1), Value::Text(fmt.into())),
        (int(2), Value::Bytes(auth_data)),
        (int(3), Value::Map(stmt)),
    ])
}
