//! The server's own license model (what `addProduct` and `license/upload` produce) and
//! the JSON shapes the SDKs read (spec §4–§5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::{format_micros, format_opt};

// The terms shared with signed license files are the license file's own types: one
// definition, so an uploaded file and `addProduct` produce the same thing.
pub use crate::license_file::{ConsumptionTerms, FeatureKind, FeatureTerms, LicenseAuth as Auth};

impl FeatureKind {
    /// Wire name (`feature_type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Activation => "activation",
            Self::Consumption => "consumption",
        }
    }
}

/// The static terms of a license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseTerms {
    /// Product short code.
    pub product: String,
    /// Product display name.
    #[serde(default)]
    pub product_name: Option<String>,
    /// Key or user authorisation.
    pub auth: Auth,
    /// `perpetual`, `time-limited`, `subscription`, `consumption`.
    pub license_type: String,
    /// Floating seats.
    pub floating_users: u32,
    /// Seat timeout without re-registration.
    pub floating_timeout_minutes: u32,
    /// Borrowing limit; 0 = borrowing not allowed.
    pub max_borrow_time_hours: u32,
    /// Consumption terms (consumption licenses).
    #[serde(default)]
    pub consumption: Option<ConsumptionTerms>,
    /// Features.
    #[serde(default)]
    pub features: Vec<FeatureTerms>,
    /// Not valid before (µs).
    #[serde(default)]
    pub valid_from: Option<i64>,
    /// Not valid after (µs).
    #[serde(default)]
    pub valid_until: Option<i64>,
    /// Every action first checks the hardware key.
    #[serde(default)]
    pub hardware_key_required: bool,
    /// Key serials this license may be activated with (empty = any valid key).
    #[serde(default)]
    pub allowed_serials: Vec<String>,
}

impl LicenseTerms {
    /// A feature by code.
    pub fn feature(&self, code: &str) -> Option<&FeatureTerms> {
        self.features.iter().find(|f| f.code == code)
    }
}

/// Where a license came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseSource {
    /// `addProduct`.
    Api,
    /// A signed license file.
    File,
}

impl LicenseSource {
    /// Stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::File => "file",
        }
    }
}

/// A license activated on this server, with its running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// Server-side license id (`license_id` on the wire).
    pub id: u64,
    /// Static terms.
    pub terms: LicenseTerms,
    /// Hardware ID in force when it was added (the key serial for key-bound licenses).
    pub activation_hardware_id: String,
    /// Origin.
    pub source: LicenseSource,
    /// When it was added (µs).
    pub added_at: i64,
    /// Consumptions so far.
    pub total_consumptions: i64,
    /// Feature consumptions so far, by feature code.
    pub feature_totals: BTreeMap<String, i64>,
}

/// A floating seat held by one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// License.
    pub license_id: u64,
    /// Opaque client identity.
    pub user: String,
    /// First registration (µs).
    pub registered_at: i64,
    /// Seat lapses at (µs) unless re-registered or borrowed.
    pub expires_at: i64,
    /// Borrowed until (µs).
    pub borrowed_until: Option<i64>,
    /// Client host name.
    pub os_hostname: Option<String>,
    /// Client IP.
    pub ip_local: Option<String>,
    /// Free text.
    pub user_info: Option<String>,
}

impl Registration {
    /// Whether the seat is held at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at > now || self.borrowed_until.is_some_and(|b| b > now)
    }
}

/// A floating feature slot held by one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRegistration {
    /// License.
    pub license_id: u64,
    /// Feature code.
    pub feature: String,
    /// User.
    pub user: String,
    /// First registration (µs).
    pub registered_at: i64,
    /// Lapses at (µs).
    pub expires_at: i64,
    /// Client host name.
    pub os_hostname: Option<String>,
    /// Client IP.
    pub ip_local: Option<String>,
    /// Free text.
    pub user_info: Option<String>,
}

/// Account role in authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Licensing calls, reports, health.
    User,
}

impl Role {
    /// Wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// Parses `admin` / `user`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// A server account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// One audit record (key events and admin actions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Sequence number (0 before insertion).
    pub id: i64,
    /// When (µs).
    #[serde(skip)]
    pub at: i64,
    /// e.g. `key_valid`, `key_lost`, `license_added`, `registration_released`.
    pub kind: String,
    /// Who did it (user name, `anonymous`, `monitor`).
    pub actor: Option<String>,
    /// License concerned.
    pub license_id: Option<u64>,
    /// Free text.
    pub detail: String,
}

impl AuditEvent {
    /// A new event stamped now.
    pub fn new(kind: &str, actor: Option<&str>, license_id: Option<u64>, detail: impl Into<String>) -> Self {
        Self {
            id: 0,
            at: crate::clock::now_micros(),
            kind: kind.into(),
            actor: actor.map(str::to_owned),
            license_id,
            detail: detail.into(),
        }
    }

    /// JSON for the admin API.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "at": format_micros(self.at), "kind": self.kind, "actor": self.actor,
            "license_id": self.license_id, "detail": self.detail,
        })
    }
}

// ---------------------------------------------------------------- wire shapes

fn overage_fields(allow: bool, max: i64) -> (bool, i64) {
    (allow, if allow { max } else { 0 })
}

/// One `product_features[]` entry (spec §5.1), with live counters.
pub fn feature_object(l: &License, index: usize, f: &FeatureTerms, in_use: usize) -> Value {
    let timeout = f.floating_timeout_minutes.unwrap_or(l.terms.floating_timeout_minutes);
    let mut o = json!({
        "id": index as u64 + 1,
        "code": f.code,
        "name": f.name.clone().unwrap_or_else(|| f.code.clone()),
        "feature_type": f.kind.as_str(),
        "is_floating": f.floating_users.is_some(),
        "is_floating_cloud": false,
        "floating_timeout": timeout,
        "floating_users": f.floating_users.unwrap_or(0),
        "floating_in_use_devices": in_use,
        "expiry_date": null,
        "metadata": {},
    });
    if f.kind == FeatureKind::Consumption {
        let max = f.max_consumption.unwrap_or(0);
        let (allow, max_over) = overage_fields(f.allow_overages, f.max_overages);
        let extra = json!({
            "max_consumption": max,
            "max_consumptions": max,
            "total_consumptions": l.feature_totals.get(&f.code).copied().unwrap_or(0),
            "allow_overages": allow,
            "max_overages": max_over,
            "allow_unlimited_consumptions": false,
            "allow_negative_consumptions": false,
            "reset_consumption": false,
            "consumption_period": null,
        });
        merge(&mut o, extra);
    }
    o
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

/// Consumption fields of the license (also the add_consumption response, with `id`).
pub fn consumption_fields(l: &License) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(c) = &l.terms.consumption {
        let (allow, max_over) = overage_fields(c.allow_overages, c.max_overages);
        m.insert("max_consumptions".into(), json!(c.max_consumptions));
        m.insert("total_consumptions".into(), json!(l.total_consumptions));
        m.insert("allow_unlimited_consumptions".into(), json!(c.allow_unlimited));
        m.insert("allow_negative_consumptions".into(), json!(c.allow_negative));
        m.insert("allow_overages".into(), json!(allow));
        m.insert("max_overages".into(), json!(max_over));
        m.insert("reset_consumption".into(), json!(c.reset_period.is_some()));
        m.insert("consumption_period".into(), json!(c.reset_period));
    }
    m
}

/// The license object of spec §5 (`license_json`, decoded). Never contains `hardware_id`,
/// `local_consumptions` or a string `user` (§5.2).
pub fn license_object(
    l: &License,
    seats_in_use: usize,
    feature_in_use: &BTreeMap<String, usize>,
) -> Map<String, Value> {
    let t = &l.terms;
    let features: Vec<Value> = t
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| feature_object(l, i, f, feature_in_use.get(&f.code).copied().unwrap_or(0)))
        .collect();
    let auth_method = match &t.auth {
        Auth::Key { .. } => "license-key",
        Auth::User { .. } => "user",
    };
    let mut o = json!({
        "id": l.id,
        "license_type": t.license_type,
        "is_floating": true,
        "is_floating_cloud": false,
        "floating_timeout": t.floating_timeout_minutes,
        "floating_users": t.floating_users,
        "floating_in_use_devices": seats_in_use,
        "validity_period": format_opt(t.valid_until),
        "start_date": format_opt(t.valid_from),
        "maintenance_period": null,
        "enable_maintenance_period": false,
        "prevent_vm": false,
        "is_trial": false,
        "max_activations": 1,
        "allow_unlimited_activations": false,
        "times_activated": 1,
        "transfer_count": 0,
        "max_transfers": 0,
        "allow_grace_period": false,
        "grace_period": 0,
        "can_borrow": t.max_borrow_time_hours > 0,
        "max_borrow_time": t.max_borrow_time_hours,
        "is_borrowed": false,
        "borrowed_until": null,
        "is_hardware_key_auth": t.hardware_key_required,
        "metadata": {},
        "customer": {},
        "custom_fields": [],
        "product_details": {
            "product_id": 0,
            "product_name": t.product_name.clone().unwrap_or_else(|| t.product.clone()),
            "short_code": t.product,
            "authorization_method": auth_method,
            "floating_timeout": t.floating_timeout_minutes,
            "prevent_vm": false,
        },
        "product_features": features,
    });
    let Value::Object(map) = &mut o else {
        return Map::new();
    };
    match &t.auth {
        Auth::Key { license_key } => {
            map.insert("license_key".into(), json!(license_key));
        }
        Auth::User { username, .. } => {
            // Inside license_json an object `user` is fine (a string would crash Python).
            map.insert("user".into(), json!({ "email": username }));
        }
    }
    map.extend(consumption_fields(l));
    std::mem::take(map)
}

/// The license-list entry for admins: the license object plus server-side facts.
pub fn license_list_entry(l: &License, seats_in_use: usize, feature_in_use: &BTreeMap<String, usize>) -> Value {
    let mut o = license_object(l, seats_in_use, feature_in_use);
    o.insert("product".into(), json!(l.terms.product));
    o.insert("license_id".into(), json!(l.id));
    o.insert("hardware_key_required".into(), json!(l.terms.hardware_key_required));
    o.insert("activation_hardware_id".into(), json!(l.activation_hardware_id));
    o.insert("source".into(), json!(l.source.as_str()));
    o.insert("added_at".into(), json!(format_micros(l.added_at)));
    Value::Object(o)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> License {
        License {
            id: 7,
            terms: LicenseTerms {
                product: "acme".into(),
                product_name: None,
                auth: Auth::Key {
                    license_key: "K-1".into(),
                },
                license_type: "consumption".into(),
                floating_users: 2,
                floating_timeout_minutes: 30,
                max_borrow_time_hours: 24,
                consumption: Some(ConsumptionTerms {
                    max_consumptions: 10,
                    allow_unlimited: false,
                    allow_overages: true,
                    max_overages: 5,
                    allow_negative: false,
                    allow_negative_total: false,
                    reset_period: None,
                }),
                features: vec![FeatureTerms {
                    code: "f".into(),
                    name: None,
                    kind: FeatureKind::Consumption,
                    floating_users: None,
                    floating_timeout_minutes: None,
                    max_consumption: Some(3),
                    allow_overages: false,
                    max_overages: 0,
                }],
                valid_from: None,
                valid_until: None,
                hardware_key_required: true,
                allowed_serials: vec![],
            },
            activation_hardware_id: "123".into(),
            source: LicenseSource::Api,
            added_at: 0,
            total_consumptions: 4,
            feature_totals: BTreeMap::new(),
        }
    }

    #[test]
    fn license_object_has_what_python_needs_and_nothing_it_must_not_see() {
        let o = license_object(&sample(), 1, &BTreeMap::new());
        for k in [
            "id",
            "is_floating",
            "is_floating_cloud",
            "floating_timeout",
            "license_type",
            "validity_period",
            "product_features",
            "product_details",
            "max_consumptions",
            "total_consumptions",
            "allow_overages",
            "max_overages",
            "grace_period",
            "metadata",
        ] {
            assert!(o.contains_key(k), "{k}");
        }
        for k in [
            "hardware_id",
            "local_consumptions",
            "activation_date",
            "floating_end_date",
        ] {
            assert!(!o.contains_key(k), "{k}");
        }
        assert_eq!(o["product_details"]["short_code"], "acme");
        assert_eq!(o["product_features"][0]["max_consumption"], 3);
        assert_eq!(o["validity_period"], Value::Null);
    }
}
