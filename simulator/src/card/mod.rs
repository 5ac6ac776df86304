//! A virtual provisioned YubiKey (PIV applet) and the vpcd client that serves it to pcscd.
