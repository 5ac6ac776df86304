//! The PIV card management key (slot 9B): 3DES (YubiKey firmware before 5.7) or AES
//! (default AES-192 from 5.7), used by the card to answer the mutual GENERAL AUTHENTICATE
//! that unlocks GENERATE, PUT DATA and IMPORT.

use std::fmt;

use aes::{Aes128, Aes192, Aes256};
use des::cipher::{Block, BlockEncrypt, KeyInit};
use des::TdesEde3;
use keyfloat_hal::Firmware;

/// The factory-default management key of every YubiKey (`01 02 … 08` three times).
pub const MGMT_DEFAULT_KEY: [u8; 24] = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8];

/// PIV algorithm ids of management keys.
pub(crate) const ALG_3DES: u8 = 0x03;
/// AES-128.
pub(crate) const ALG_AES128: u8 = 0x08;
/// AES-192.
pub(crate) const ALG_AES192: u8 = 0x0A;
/// AES-256.
pub(crate) const ALG_AES256: u8 = 0x0C;

/// A management key and its algorithm.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementKey {
    algorithm: u8,
    key: Vec<u8>,
}

impl fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl ManagementKey {
    /// The default key with the algorithm `firmware` uses for it (AES-192 from 5.7).
    pub fn default_for(firmware: Firmware) -> Self {
        let algorithm = if firmware >= Firmware::new(5, 7, 0) {
            ALG_AES192
        } else {
            ALG_3DES
        };
        Self {
            algorithm,
            key: MGMT_DEFAULT_KEY.to_vec(),
        }
    }

    /// A key of `algorithm`; `None` when the length does not fit the algorithm.
    pub fn new(algorithm: u8, key: &[u8]) -> Option<Self> {
        let len = match algorithm {
            ALG_3DES | ALG_AES192 => 24,
            ALG_AES128 => 16,
            ALG_AES256 => 32,
            _ => return None,
        };
        (key.len() == len).then(|| Self {
            algorithm,
            key: key.to_vec(),
        })
    }

    /// The PIV algorithm id.
    pub fn algorithm(&self) -> u8 {
        self.algorithm
    }

    /// Whether this is the factory default key.
    pub fn is_default(&self) -> bool {
        self.key == MGMT_DEFAULT_KEY
    }

    /// Cipher block size: the witness and challenge length.
    pub fn block_len(&self) -> usize {
        if self.algorithm == ALG_3DES {
            8
        } else {
            16
        }
    }

    /// Encrypts one block (ECB, as the protocol uses it). `block` must be `block_len` bytes;
    /// other lengths give an empty answer, which never matches.
    pub fn encrypt(&self, block: &[u8]) -> Vec<u8> {
        if block.len() != self.block_len() {
            return Vec::new();
        }
        match self.algorithm {
            ALG_3DES => encrypt_block::<TdesEde3>(&self.key, block),
            ALG_AES128 => encrypt_block::<Aes128>(&self.key, block),
            ALG_AES192 => encrypt_block::<Aes192>(&self.key, block),
            ALG_AES256 => encrypt_block::<Aes256>(&self.key, block),
            _ => Vec::new(),
        }
    }
}

// cipher 0.4 speaks generic-array 0.14, whose newest patch marks its API deprecated in
// favour of 1.x; cipher 0.5 is not released, so this is the current API.
#[allow(deprecated)]
fn encrypt_block<C: BlockEncrypt + KeyInit>(key: &[u8], block: &[u8]) -> Vec<u8> {
    let Ok(cipher) = C::new_from_slice(key) else {
        return Vec::new();
    };
    if block.len() != C::block_size() {
        return Vec::new();
    }
    let mut b = Block::<C>::clone_from_slice(block);
    cipher.encrypt_block(&mut b);
    b.to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // NIST SP 800-67 style check: 3DES with K1=K2=K3 equals single DES; and the AES-128
        // FIPS-197 appendix C.1 vector.
        let aes = ManagementKey::new(ALG_AES128, &hex::decode("000102030405060708090a0b0c0d0e0f").unwrap()).unwrap();
        assert_eq!(
            hex::encode(aes.encrypt(&hex::decode("00112233445566778899aabbccddeeff").unwrap())),
            "69c4e0d86a7b0430d8cdb78070b4c55a"
        );
        let tdes = ManagementKey::default_for(Firmware::new(5, 4, 3));
        assert_eq!(tdes.algorithm(), ALG_3DES);
        assert_eq!(tdes.encrypt(&[0u8; 8]).len(), 8);
        assert!(tdes.encrypt(&[0u8; 7]).is_empty());
        assert_eq!(ManagementKey::default_for(Firmware::new(5, 7, 1)).block_len(), 16);
        assert!(ManagementKey::new(ALG_AES256, &[0; 24]).is_none());
    }
}
