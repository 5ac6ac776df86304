//! HID backend (feature `hid`): YubiKey OTP and FIDO interfaces, generic HID dongles.
