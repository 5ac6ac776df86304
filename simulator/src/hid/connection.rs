//! An open interface of a virtual key: the fault verbs, then the OTP or FIDO interface.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keyfloat_hal::backend::hid::ctaphid::PACKET_SIZE;
use keyfloat_hal::backend::hid::HidConnection;
use keyfloat_hal::{Error, ErrorKind, Result};

use super::fido::fido_write;
use super::otp::{otp_read, otp_write};
use super::{gone, Device, Iface, State};

/// An open interface of a virtual key.
#[derive(Debug)]
pub(super) struct SimHidConnection {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) unhung: Arc<Condvar>,
    pub(super) name: String,
    pub(super) generation: u64,
    pub(super) iface: Iface,
}

impl SimHidConnection {
    /// Runs `op` on the device if it is still the one this connection opened; applies the
    /// fault verbs first. `counts` marks operations that move a frame/message forward.
    fn with<T>(&self, counts: bool, op: impl FnOnce(&mut Device) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let this = |d: &Device| d.plugged && d.generation == self.generation;
        while st.devices.get(&self.name).is_some_and(|d| this(d) && d.hung) {
            st = self.unhung.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let d = st
            .devices
            .get_mut(&self.name)
            .filter(|d| this(d))
            .ok_or_else(|| gone(&self.name))?;
        if let Some(kind) = d.fail_next.take() {
            return Err(Error::new(
                kind,
                format!("injected failure on simulated HID key {:?}", self.name),
            ));
        }
        if counts {
            match d.vanish_after {
                Some(0) => {
                    d.plugged = false;
                    d.vanish_after = None;
                    return Err(gone(&self.name));
                }
                Some(n) => d.vanish_after = Some(n - 1),
                None => {}
            }
        }
        op(d)
    }
}

impl HidConnection for SimHidConnection {
    fn send_feature_report(&mut self, data: &[u8]) -> Result<()> {
        if self.iface != Iface::Otp {
            return Err(Error::new(ErrorKind::Io, "feature report on an interface without one"));
        }
        self.with(true, |d| {
            if data.len() != 9 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("feature report of {} bytes", data.len()),
                ));
            }
            otp_write(d, &data[1..]);
            Ok(())
        })
    }

    fn get_feature_report(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.iface != Iface::Otp {
            return Err(Error::new(ErrorKind::Io, "feature report on an interface without one"));
        }
        self.with(false, |d| {
            if buf.len() < 9 {
                return Err(Error::new(ErrorKind::Io, "feature report buffer too small"));
            }
            let report = otp_read(d);
            buf[0] = 0;
            buf[1..9].copy_from_slice(&report);
            Ok(9)
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        if self.iface != Iface::Fido {
            return Err(Error::new(ErrorKind::Io, "output report on an interface without one"));
        }
        self.with(true, |d| {
            if data.len() != PACKET_SIZE + 1 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("output report of {} bytes", data.len()),
                ));
            }
            fido_write(d, &data[1..]);
            Ok(data.len())
        })
    }

    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        if self.iface != Iface::Fido {
            return Err(Error::new(ErrorKind::Io, "input report on an interface without one"));
        }
        let next = self.with(false, |d| Ok(d.fido.out.pop_front()))?;
        match next {
            Some(p) => {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                Ok(n)
            }
            None => {
                // Nothing will come: answers are queued when the request is written.
                std::thread::sleep(timeout.min(Duration::from_millis(20)));
                Ok(0)
            }
        }
    }
}
