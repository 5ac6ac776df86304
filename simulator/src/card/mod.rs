//! A virtual provisioned YubiKey (PIV applet) and the vpcd client that serves it to pcscd.
//!
//! - [`VirtualCard`]: the card (PIV, management and OTP applets), a pure state machine.
//! - [`CardServer`]: connects the card to pcscd's vsmartcard reader (`vpcd`) and lets a
//!   test or the `keyfloat simulate card` command remove / re-insert it.
//! - [`PrivatePcscd`]: a pcscd of one's own (own mount namespace, own vpcd ports), so tests
//!   run in parallel with each other and with the system pcscd.

mod applet;
mod mgmt;
mod pcscd;
mod vpcd;

pub use applet::{VirtualCard, ATR_YUBIKEY5_NFC};
pub use mgmt::{ManagementKey, MGMT_DEFAULT_KEY};
pub use pcscd::{require_pcscd, PrivatePcscd, CSOCK_ENV, YUBICO_READER_NAME};
pub use vpcd::{CardServer, DEFAULT_VPCD};
