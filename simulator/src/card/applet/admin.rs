//! The card's key management: management-key authentication, GENERATE, IMPORT, ATTEST and
//! PUT DATA — what provisioning tools (yubico-piv-tool, ykman) send.

use keyfloat_hal::piv::{self, find_tlv, parse_tlvs, sw, tlv, Apdu, Response};

use super::*;

impl VirtualCard {
    /// GENERAL AUTHENTICATE with the management key (slot 9B), mutual: the card sends an
    /// encrypted witness, the host returns it decrypted with its own challenge, the card
    /// answers the challenge encrypted.
    pub(super) fn mgmt_authenticate(&mut self, a: &Apdu) -> Response {
        let witness = self.mgmt_witness.take();
        self.mgmt_authenticated = false;
        if a.p1 != self.mgmt_key.algorithm() {
            return Response::new([], sw::WRONG_DATA);
        }
        let Some(tlvs) = nested_tlvs(&a.data, 0x7C) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let block = self.mgmt_key.block_len();
        match (find_tlv(&tlvs, 0x80), find_tlv(&tlvs, 0x81)) {
            // Step 1: the host asks for a witness.
            (Some([]), None) => {
                let mut w = vec![0u8; block];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut w);
                let encrypted = self.mgmt_key.encrypt(&w);
                self.mgmt_witness = Some(w);
                Response::new(tlv(0x7C, &tlv(0x80, &encrypted)), sw::OK)
            }
            // Step 2: the decrypted witness and the host's challenge.
            (Some(decrypted), Some(challenge)) if decrypted.len() == block && challenge.len() == block => match witness
            {
                Some(w) if w == decrypted => {
                    self.mgmt_authenticated = true;
                    let answer = self.mgmt_key.encrypt(challenge);
                    Response::new(tlv(0x7C, &tlv(0x82, &answer)), sw::OK)
                }
                _ => Response::new([], sw::SECURITY_STATUS),
            },
            _ => Response::new([], sw::WRONG_DATA),
        }
    }

    /// `INS F9`: a certificate for slot 9E's key, signed by the F9 attestation key.
    pub(super) fn attest(&self, a: &Apdu) -> Response {
        if a.p1 != piv::slot::CARD_AUTH {
            // Only 9E holds a key on this card.
            return Response::new([], sw::REF_NOT_FOUND);
        }
        match &self.attester {
            Attester::Replay(canned) => Response::new(canned.certificate.clone(), sw::OK),
            Attester::Device(d) if self.key_generated => {
                match d.attest(
                    a.p1,
                    &self.public_key_der(),
                    self.firmware,
                    self.policy[0],
                    self.policy[1],
                ) {
                    Ok(cert) => Response::new(cert, sw::OK),
                    Err(_) => Response::new([], sw::WRONG_DATA),
                }
            }
            // Imported keys cannot be attested.
            _ => Response::new([], sw::WRONG_DATA),
        }
    }

    /// `INS 47`: generates a P-256 key pair in slot 9E (management key required).
    pub(super) fn generate(&mut self, a: &Apdu) -> Response {
        if !self.mgmt_authenticated {
            return Response::new([], sw::SECURITY_STATUS);
        }
        if a.p2 != piv::slot::CARD_AUTH {
            return Response::new([], sw::WRONG_P1P2);
        }
        let Some(params) = nested_tlvs(&a.data, 0xAC) else {
            return Response::new([], sw::WRONG_DATA);
        };
        if find_tlv(&params, 0x80) != Some(&[piv::alg::ECCP256][..]) {
            return Response::new([], sw::WRONG_DATA);
        }
        let Some(policy) = policies(&params) else {
            return Response::new([], sw::WRONG_DATA);
        };
        self.signing_key = SigningKey::random(&mut rand_core::OsRng);
        self.key_generated = true;
        self.policy = policy;
        let point = self.signing_key.verifying_key().to_encoded_point(false);
        Response::new(tlv(0x7F49, &tlv(0x86, point.as_bytes())), sw::OK)
    }

    /// `INS FE`: imports a P-256 private key into slot 9E (management key required).
    pub(super) fn import_key(&mut self, a: &Apdu) -> Response {
        if !self.mgmt_authenticated {
            return Response::new([], sw::SECURITY_STATUS);
        }
        if a.p2 != piv::slot::CARD_AUTH {
            return Response::new([], sw::WRONG_P1P2);
        }
        if a.p1 != piv::alg::ECCP256 {
            return Response::new([], sw::WRONG_DATA);
        }
        let Ok(tlvs) = parse_tlvs(&a.data) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let (Some(scalar), Some(policy)) = (find_tlv(&tlvs, 0x06), policies(&tlvs)) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let Ok(key) = SigningKey::from_slice(scalar) else {
            return Response::new([], sw::WRONG_DATA);
        };
        self.signing_key = key;
        self.key_generated = false;
        self.policy = policy;
        Response::new([], sw::OK)
    }

    /// `INS DB`: writes a data object (management key required). An empty object deletes it.
    pub(super) fn put_data(&mut self, a: &Apdu) -> Response {
        if !self.mgmt_authenticated {
            return Response::new([], sw::SECURITY_STATUS);
        }
        if (a.p1, a.p2) != (0x3F, 0xFF) {
            return Response::new([], sw::WRONG_P1P2);
        }
        let Ok(tlvs) = parse_tlvs(&a.data) else {
            return Response::new([], sw::WRONG_DATA);
        };
        let (Some(id), Some(content)) = (find_tlv(&tlvs, 0x5C), find_tlv(&tlvs, 0x53)) else {
            return Response::new([], sw::WRONG_DATA);
        };
        if id == CERT_OBJECT_9E {
            if content.is_empty() {
                self.certificate = None;
                return Response::new([], sw::OK);
            }
            let cert = parse_tlvs(content)
                .ok()
                .and_then(|t| find_tlv(&t, 0x70).map(<[u8]>::to_vec));
            return match cert {
                Some(cert) if !cert.is_empty() => {
                    self.certificate = Some(cert);
                    Response::new([], sw::OK)
                }
                _ => Response::new([], sw::WRONG_DATA),
            };
        }
        if id.is_empty() || id.len() > 3 {
            return Response::new([], sw::WRONG_DATA);
        }
        if content.is_empty() {
            self.objects.remove(id);
        } else {
            self.objects.insert(id.to_vec(), content.to_vec());
        }
        Response::new([], sw::OK)
    }
}

/// PIN (`AA`) and touch (`AB`) policy of a GENERATE / IMPORT command; 0 or absent is the
/// 9E default, never. `None` when a value is malformed.
fn policies(tlvs: &[piv::Tlv<'_>]) -> Option<[u8; 2]> {
    let pick = |tag| match find_tlv(tlvs, tag) {
        None | Some([0]) => Some(POLICY_NEVER),
        Some([b @ 1..=3]) => Some(*b),
        Some(_) => None,
    };
    Some([pick(0xAA)?, pick(0xAB)?])
}
