//! [`KeyBackend`]: which backends to watch, as the command line and the configuration say it.

use crate::key::BackendKind;

/// Which backends to watch: the one choice the command line (`--key-backend`), the YAML
/// configuration (`key_backend`) and the server share. Written `auto`, `pcsc`, `hid`, `sim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBackend {
    /// Every hardware backend compiled in (pcsc, hid).
    #[default]
    Auto,
    /// Smart-card interface through pcscd.
    Pcsc,
    /// USB HID.
    Hid,
    /// Simulated keys (tests, demo); never accepted for licenses signed by a real vendor key.
    Sim,
}

impl KeyBackend {
    /// Every choice, in the order the help lists them.
    pub const ALL: [Self; 4] = [Self::Auto, Self::Pcsc, Self::Hid, Self::Sim];

    /// The name on the command line and in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Pcsc => "pcsc",
            Self::Hid => "hid",
            Self::Sim => "sim",
        }
    }

    /// One line for `--help`.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Auto => "Every hardware backend compiled in (pcsc, hid)",
            Self::Pcsc => "Smart-card interface through pcscd",
            Self::Hid => "USB HID",
            Self::Sim => "Simulated keys (tests, demo); never accepted for licenses signed by a real vendor key",
        }
    }

    /// The one backend chosen, `None` for `auto`.
    pub const fn kind(self) -> Option<BackendKind> {
        match self {
            Self::Auto => None,
            Self::Pcsc => Some(BackendKind::Pcsc),
            Self::Hid => Some(BackendKind::Hid),
            Self::Sim => Some(BackendKind::Sim),
        }
    }
}

impl std::fmt::Display for KeyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`KeyBackend::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key backend {0:?} (expected auto, pcsc, hid or sim)")]
pub struct UnknownKeyBackend(pub String);

impl std::str::FromStr for KeyBackend {
    type Err = UnknownKeyBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownKeyBackend(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_backend_names_round_trip() {
        for b in KeyBackend::ALL {
            assert_eq!(b.as_str().parse::<KeyBackend>(), Ok(b));
            assert_eq!(b.to_string(), b.as_str());
        }
        assert!("usb".parse::<KeyBackend>().is_err());
        assert_eq!(KeyBackend::Sim.kind(), Some(BackendKind::Sim));
        assert_eq!(KeyBackend::Auto.kind(), None);
        assert_eq!(KeyBackend::default(), KeyBackend::Auto);
    }
}
