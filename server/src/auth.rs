//! Authentication mode (spec §1.4): argon2 password hashes, HS256 JWTs signed with a
//! per-installation secret kept in the data dir (mode 0600).

use std::io::Write;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::model::Role;

/// File name of the JWT secret inside the data dir.
pub const SECRET_FILE: &str = "jwt-secret";

/// Tokens stay valid for the life of a client process: the SDKs never refresh a v1 token.
pub const TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Account name.
    pub username: String,
    /// `admin` or `user`.
    pub role: String,
    /// Issued at (s).
    pub iat: u64,
    /// Expires (s).
    pub exp: u64,
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name (`anonymous` in no-auth mode).
    pub username: String,
    /// Role (admin in no-auth mode: every endpoint is open).
    pub role: Role,
}

impl TokenKeys {
    /// Keys from a raw secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Loads `<data_dir>/jwt-secret`, creating a random one (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(SECRET_FILE);
        let b64 = base64::engine::general_purpose::STANDARD;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let secret = b64.decode(text.trim()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
                })?;
                if secret.len() < 32 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: secret too short", path.display()),
                    ));
                }
                Ok(Self::from_secret(&secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)?;
                let mut secret = [0u8; 32];
                OsRng.fill_bytes(&mut secret);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path)?;
                f.write_all(b64.encode(secret).as_bytes())?;
                f.sync_all()?;
                Ok(Self::from_secret(&secret))
            }
            Err(e) => Err(e),
        }
    }

    /// A token for `username` with `role`.
    pub fn issue(&self, username: &str, role: Role) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: username.into(),
            role: role.as_str().into(),
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Verifies a token: HS256 only (so `alg: none` and other algorithms fail), signature,
    /// expiry, known role.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        Some(Caller {
            role: Role::parse(&data.claims.role)?,
            username: data.claims.username,
        })
    }
}

/// Argon2id PHC hash of a password.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks a password against a PHC hash (false on a malformed hash).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Decodes `Authorization: Basic …` into (user, password).
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The token of `Authorization: Bearer …`.
pub fn parse_bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let k = TokenKeys::from_secret(&[7; 32]);
        let t = k.issue("ann", Role::Admin).unwrap();
        assert_eq!(
            k.verify(&t),
            Some(Caller {
                username: "ann".into(),
                role: Role::Admin
            })
        );
        let other = TokenKeys::from_secret(&[8; 32]);
        assert_eq!(other.verify(&t), None);
        // alg: none with the same claims.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(k.verify(&none), None);
        assert_eq!(k.verify("garbage"), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("nope", &h));
        assert!(!verify_password("s3cret", "not-a-hash"));
    }

    #[test]
    fn secret_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenKeys::load_or_create(dir.path()).unwrap();
        let b = TokenKeys::load_or_create(dir.path()).unwrap();
        let t = a.issue("u", Role::User).unwrap();
        assert!(b.verify(&t).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn basic_and_bearer_headers() {
        assert_eq!(parse_basic("Basic YTpiOmM="), Some(("a".into(), "b:c".into())));
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
    }
}
