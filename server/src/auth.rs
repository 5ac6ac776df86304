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

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::error::ApiError;
use crate::model::{Account, Role};
use crate::state::AppState;
use crate::store::{transact, Store};

/// File name of the JWT secret inside the data dir.
pub const SECRET_FILE: &str = "jwt-secret";

/// Default token lifetime: the life of a client process (the SDKs never refresh a v1
/// token). Configurable with `token_lifetime_secs`.
pub const TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// `mode` claim of tokens minted in authentication mode.
pub const MODE_AUTH: &str = "auth";
/// `mode` claim of tokens minted while authentication was off: never accepted in
/// authentication mode.
pub const MODE_OPEN: &str = "open";

/// JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Account name.
    pub username: String,
    /// `admin` or `user` (informative: the account's current role decides).
    pub role: String,
    /// The account's token generation when the token was minted.
    #[serde(default)]
    pub gen: u64,
    /// [`MODE_AUTH`] or [`MODE_OPEN`].
    #[serde(default)]
    pub mode: String,
    /// Issued at (s).
    pub iat: u64,
    /// Not before (s).
    pub nbf: u64,
    /// Expires (s).
    pub exp: u64,
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    lifetime_secs: u64,
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenKeys {
    /// Keys from a raw secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            lifetime_secs: TOKEN_LIFETIME_SECS,
        }
    }

    /// Tokens minted from now on live `secs` (at least one second).
    #[must_use]
    pub fn with_lifetime(mut self, secs: u64) -> Self {
        self.lifetime_secs = secs.max(1);
        self
    }

    /// Loads `<data_dir>/jwt-secret`, creating a random one (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(SECRET_FILE);
        let b64 = base64::engine::general_purpose::STANDARD;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                crate::files::make_private_file(&path)?;
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
                crate::files::make_private_dir(data_dir)?;
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
                crate::files::make_private_file(&path)?;
                Ok(Self::from_secret(&secret))
            }
            Err(e) => Err(e),
        }
    }

    /// A token for `username` with `role` and token generation `gen`; `mode` is
    /// [`MODE_AUTH`] or [`MODE_OPEN`].
    pub fn issue(
        &self,
        username: &str,
        role: Role,
        gen: u64,
        mode: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = unix_now();
        let claims = Claims {
            username: username.into(),
            role: role.as_str().into(),
            gen,
            mode: mode.into(),
            iat,
            nbf: iat,
            exp: iat.saturating_add(self.lifetime_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a token's form: HS256 only (so `alg: none` and other algorithms fail),
    /// signature, `exp`, `nbf`, and an `iat` not in the future. Whether its account still
    /// honours it is [`Accounts::caller`]'s business.
    pub fn decode(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "nbf", "iat"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?.claims;
        // A token "issued" in the future was not issued by this clock.
        (claims.iat <= unix_now() && claims.nbf >= claims.iat && claims.exp > claims.iat).then_some(claims)
    }
}

/// What the server keeps in memory about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Role now.
    pub role: Role,
    /// Token generation now: tokens minted under another generation are refused.
    pub generation: u64,
    /// Argon2 PHC hash.
    pub password_hash: String,
}

/// The in-memory copy of the accounts that every authenticated request is checked
/// against (no store round-trip). Refreshed from the store by [`watch_accounts`].
#[derive(Debug, Default)]
pub struct Accounts {
    map: ArcSwap<HashMap<String, AccountView>>,
}

impl Accounts {
    /// Replaces the copy.
    pub fn replace(&self, accounts: &[Account], generations: &HashMap<String, u64>) {
        let map = accounts
            .iter()
            .map(|a| {
                (
                    a.username.clone(),
                    AccountView {
                        role: a.role,
                        generation: generations.get(&a.username).copied().unwrap_or(0),
                        password_hash: a.password_hash.clone(),
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        if **self.map.load() != map {
            self.map.store(Arc::new(map));
        }
    }

    /// One account.
    pub fn get(&self, username: &str) -> Option<AccountView> {
        self.map.load().get(username).cloned()
    }

    /// The caller a verified token names in authentication mode: the account must exist,
    /// the token must come from authentication mode and carry the account's current
    /// generation. The role is the account's current one.
    pub fn caller(&self, claims: &Claims) -> Option<Caller> {
        if claims.mode != MODE_AUTH {
            return None;
        }
        let map = self.map.load();
        let view = map.get(&claims.username)?;
        (view.generation == claims.gen && Role::parse(&claims.role) == Some(view.role)).then(|| Caller {
            username: claims.username.clone(),
            role: view.role,
        })
    }
}

/// How often the in-memory accounts follow changes made by `keyfloat user` while the
/// server runs.
pub const ACCOUNTS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads the accounts and their token generations from the store.
pub async fn load_accounts(store: &dyn Store) -> Result<(Vec<Account>, HashMap<String, u64>), ApiError> {
    transact(store, |tx| Ok((tx.accounts()?, tx.token_generations()?))).await
}

/// Keeps `state`'s account copy in step with the store (changes by `keyfloat user` in
/// another process included). Runs until the runtime stops.
pub async fn watch_accounts(state: AppState) {
    let mut tick = tokio::time::interval(ACCOUNTS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A standby serves no one; it reloads everything when it becomes leader.
        if state.role() == crate::ha::Role::Standby {
            continue;
        }
        match load_accounts(state.store()).await {
            Ok((accounts, gens)) => state.accounts().replace(&accounts, &gens),
            Err(e) => tracing::warn!(error = %e, "refreshing accounts failed"),
        }
    }
}

/// Who may read `/metrics` (see [`crate::state::MetricsAccess`]).
pub fn metrics_allowed(st: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let access = &st.security().metrics;
    if !st.user_authentication() || access.public {
        return true;
    }
    let Some(bearer) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_bearer)
    else {
        return false;
    };
    if access
        .token
        .as_deref()
        .is_some_and(|t| constant_time_eq(t.as_bytes(), bearer.as_bytes()))
    {
        return true;
    }
    st.tokens()
        .decode(bearer)
        .and_then(|c| st.accounts().caller(&c))
        .is_some()
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    fn accounts(gen: u64, role: Role) -> Accounts {
        let a = Accounts::default();
        let mut gens = HashMap::new();
        gens.insert("ann".to_owned(), gen);
        a.replace(
            &[Account {
                username: "ann".into(),
                password_hash: "h".into(),
                role,
            }],
            &gens,
        );
        a
    }

    fn caller(k: &TokenKeys, a: &Accounts, t: &str) -> Option<Caller> {
        k.decode(t).and_then(|c| a.caller(&c))
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let k = TokenKeys::from_secret(&[7; 32]);
        let a = accounts(3, Role::Admin);
        let t = k.issue("ann", Role::Admin, 3, MODE_AUTH).unwrap();
        assert_eq!(
            caller(&k, &a, &t),
            Some(Caller {
                username: "ann".into(),
                role: Role::Admin
            })
        );
        let other = TokenKeys::from_secret(&[8; 32]);
        assert_eq!(other.decode(&t), None);
        // alg: none with the same claims.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(k.decode(&none), None);
        assert_eq!(k.decode("garbage"), None);
    }

    /// Attacks on the account binding: a token from no-auth mode, an older generation, a
    /// role the account no longer has, an account that is gone, a future `nbf`/`iat`.
    #[test]
    fn tokens_are_bound_to_their_account() {
        let k = TokenKeys::from_secret(&[7; 32]);
        let a = accounts(3, Role::Admin);
        let open = k.issue("ann", Role::Admin, 3, MODE_OPEN).unwrap();
        assert_eq!(caller(&k, &a, &open), None, "no-auth token in auth mode");
        let old = k.issue("ann", Role::Admin, 2, MODE_AUTH).unwrap();
        assert_eq!(caller(&k, &a, &old), None, "older generation");
        let demoted = accounts(3, Role::User);
        let t = k.issue("ann", Role::Admin, 3, MODE_AUTH).unwrap();
        assert_eq!(caller(&k, &demoted, &t), None, "role changed");
        assert_eq!(caller(&k, &Accounts::default(), &t), None, "account deleted");
        let now = unix_now();
        for (iat, nbf) in [(now, now + 3600), (now + 3600, now + 3600)] {
            let claims = Claims {
                username: "ann".into(),
                role: "admin".into(),
                gen: 3,
                mode: MODE_AUTH.into(),
                iat,
                nbf,
                exp: now + 7200,
            };
            let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
            assert_eq!(k.decode(&t), None, "iat {iat} nbf {nbf} (now {now})");
        }
        // Without nbf (the old format) the token is refused.
        let legacy = serde_json::json!({"username":"ann","role":"admin","iat":now,"exp":now+60});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &legacy, &k.encoding).unwrap();
        assert_eq!(k.decode(&t), None);
        // The lifetime is configurable.
        let short = TokenKeys::from_secret(&[7; 32]).with_lifetime(5);
        let c = short
            .decode(&short.issue("ann", Role::User, 0, MODE_AUTH).unwrap())
            .unwrap();
        assert_eq!(c.exp - c.iat, 5);
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
        let t = a.issue("u", Role::User, 0, MODE_AUTH).unwrap();
        assert!(b.decode(&t).is_some());
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
