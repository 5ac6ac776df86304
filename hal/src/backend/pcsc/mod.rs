//! PC/SC backend (feature `pcsc`): APDUs through the system PC/SC service (pcscd).
