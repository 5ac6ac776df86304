//! A virtual HID YubiKey answering at the report level (OTP frames and CTAPHID).
