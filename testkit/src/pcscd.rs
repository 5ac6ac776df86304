//! One private pcscd per test binary, lent to its tests one at a time (feature `pcsc`).

use std::sync::{Mutex, MutexGuard, OnceLock};

use keyfloat_simulator::card::{require_pcscd, PrivatePcscd, CSOCK_ENV};

/// The binary's pcscd (started on first use at `port_hint`), behind the lock that
/// serializes the tests that use it. Panics when pcscd or vpcd is missing (the test fails).
///
/// It also points this process's libpcsclite at it (`PCSCLITE_CSOCK_NAME`), before any
/// PC/SC call: libpcsclite reads the variable once and caches it.
pub fn shared_pcscd(port_hint: u16) -> MutexGuard<'static, PrivatePcscd> {
    static PCSCD: OnceLock<Mutex<PrivatePcscd>> = OnceLock::new();
    let slot = PCSCD.get_or_init(|| {
        require_pcscd().unwrap_or_else(|e| panic!("{e}"));
        let p = PrivatePcscd::start(port_hint).expect("private pcscd");
        std::env::set_var(CSOCK_ENV, p.socket());
        Mutex::new(p)
    });
    slot.lock().unwrap_or_else(|p| p.into_inner())
}
