//! A virtual provisioned YubiKey (PIV applet) and the vpcd client that serves it to pcscd.
//!
//! - [`VirtualCard`]: the card (PIV, management and OTP applets), a pure state machine.
//! - [`CardServer`]: connects the card to pcscd's vsmartcard reader (`vpcd`) and lets a
//!   test or the `keyfloat simulate card` command remove / re-insert it.
//! - `PrivatePcscd` (feature `test-util`): a pcscd of one's own (own mount namespace, own vpcd
//!   ports), so tests run in parallel with each other and with the system pcscd.

mod applet;
mod mgmt;
#[cfg(feature = "test-util")]
mod pcscd;
mod vpcd;

pub use applet::{VirtualCard, ATR_YUBIKEY5_NFC};
pub use mgmt::{ManagementKey, MGMT_DEFAULT_KEY};
#[cfg(feature = "test-util")]
pub use pcscd::{require_pcscd, require_tools, PrivatePcscd};

/// The variable libpcsclite reads to find pcscd's socket.
pub const CSOCK_ENV: &str = "PCSCLITE_CSOCK_NAME";

/// The reader name libccid gives a real YubiKey 5: yubico-piv-tool's default reader filter
/// ("Yubikey") and ykman match it, so the tools need no `--reader`.
pub const YUBICO_READER_NAME: &str = "Yubico YubiKey OTP+FIDO+CCID";

pub use vpcd::{CardServer, DEFAULT_VPCD};
