//! The server's own license model (what `addProduct` and `license/upload` produce) and
//! the JSON shapes the SDKs read (spec §4–§5).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::{format_micros, Micros};

// One definition of the terms, shared with signed license files: an uploaded file and
// `addProduct` produce the same thing.
pub use crate::terms::{ConsumptionTerms, FeatureKind, FeatureTerms, LicenseAuth as Auth, LicenseTerms};

impl FeatureKind {
    /// Wire name (`feature_type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Activation => "activation",
            Self::Consumption => "consumption",
        }
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
    /// Static terms (shared with the catalog and the writer's cache: never copied).
    pub terms: Arc<LicenseTerms>,
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

impl License {
    /// A license as it is added: no consumptions yet.
    pub fn new(
        id: u64,
        terms: LicenseTerms,
        activation_hardware_id: String,
        source: LicenseSource,
        added_at: i64,
    ) -> Self {
        Self {
            id,
            terms: Arc::new(terms),
            activation_hardware_id,
            source,
            added_at,
            total_consumptions: 0,
            feature_totals: BTreeMap::new(),
        }
    }

    /// Detail of the `license_added` audit event; `origin` says where it came from
    /// (`api`, `file`, `demo`).
    pub fn added_audit_detail(&self, origin: &str) -> String {
        let key = if self.terms.hardware_key_required {
            ", hardware key required"
        } else {
            ""
        };
        format!(
            "product {} ({origin}), activation hardware id {}{key}",
            self.terms.product, self.activation_hardware_id
        )
    }
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
//
// Typed `Serialize` structs borrowing from the model: an answer is written straight into
// the response buffer, once, with no intermediate `serde_json::Value` maps.

/// JSON `null`.
type Null = Option<()>;

/// JSON `{}`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EmptyObject {}

fn overage_fields(allow: bool, max: i64) -> (bool, i64) {
    (allow, if allow { max } else { 0 })
}

/// One `product_features[]` entry (spec §5.1), with live counters.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureObject<'a> {
    id: u64,
    code: &'a str,
    name: &'a str,
    feature_type: &'static str,
    is_floating: bool,
    is_floating_cloud: bool,
    floating_timeout: u32,
    floating_users: u32,
    floating_in_use_devices: usize,
    expiry_date: Null,
    metadata: EmptyObject,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_consumption: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_consumptions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_consumptions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_overages: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_overages: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_unlimited_consumptions: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_negative_consumptions: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_consumption: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumption_period: Option<Null>,
}

impl<'a> FeatureObject<'a> {
    /// The entry of feature `f` (index `index`) of `l` with `in_use` live slots.
    pub fn new(l: &'a License, index: usize, f: &'a FeatureTerms, in_use: usize) -> Self {
        let consumption = f.kind == FeatureKind::Consumption;
        let max = f.max_consumption.unwrap_or(0);
        let (allow, max_over) = overage_fields(f.allow_overages, f.max_overages);
        let when = |v| consumption.then_some(v);
        Self {
            id: index as u64 + 1,
            code: &f.code,
            name: f.name.as_deref().unwrap_or(&f.code),
            feature_type: f.kind.as_str(),
            is_floating: f.floating_users.is_some(),
            is_floating_cloud: false,
            floating_timeout: f.floating_timeout_minutes.unwrap_or(l.terms.floating_timeout_minutes),
            floating_users: f.floating_users.unwrap_or(0),
            floating_in_use_devices: in_use,
            expiry_date: None,
            metadata: EmptyObject {},
            max_consumption: when(max),
            max_consumptions: when(max),
            total_consumptions: when(l.feature_totals.get(&f.code).copied().unwrap_or(0)),
            allow_overages: consumption.then_some(allow),
            max_overages: when(max_over),
            allow_unlimited_consumptions: consumption.then_some(false),
            allow_negative_consumptions: consumption.then_some(false),
            reset_consumption: consumption.then_some(false),
            consumption_period: consumption.then_some(None),
        }
    }
}

/// One `product_features[]` entry as a JSON value (the feature endpoints add fields).
pub fn feature_object(l: &License, index: usize, f: &FeatureTerms, in_use: usize) -> Value {
    serde_json::to_value(FeatureObject::new(l, index, f, in_use)).unwrap_or(Value::Null)
}

/// Consumption fields of a license (flattened into the license object and the
/// add_consumption answer).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConsumptionFields<'a> {
    max_consumptions: i64,
    total_consumptions: i64,
    allow_unlimited_consumptions: bool,
    allow_negative_consumptions: bool,
    allow_overages: bool,
    max_overages: i64,
    reset_consumption: bool,
    consumption_period: Option<&'a str>,
}

impl<'a> ConsumptionFields<'a> {
    /// `None` for a license without consumption terms.
    pub fn of(l: &'a License) -> Option<Self> {
        let c = l.terms.consumption.as_ref()?;
        let (allow, max_over) = overage_fields(c.allow_overages, c.max_overages);
        Some(Self {
            max_consumptions: c.max_consumptions,
            total_consumptions: l.total_consumptions,
            allow_unlimited_consumptions: c.allow_unlimited,
            allow_negative_consumptions: c.allow_negative,
            allow_overages: allow,
            max_overages: max_over,
            reset_consumption: c.reset_period.is_some(),
            consumption_period: c.reset_period.as_deref(),
        })
    }
}

/// The add_consumption answer: the consumption fields plus `id` and `license_id`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumptionAnswer<'a> {
    id: u64,
    license_id: u64,
    #[serde(flatten)]
    fields: Option<ConsumptionFields<'a>>,
}

impl<'a> ConsumptionAnswer<'a> {
    /// The answer for `l` (its totals already updated).
    pub fn new(l: &'a License) -> Self {
        Self {
            id: l.id,
            license_id: l.id,
            fields: ConsumptionFields::of(l),
        }
    }
}

/// `product_details` of the license object.
#[derive(Debug, Clone, Serialize)]
struct ProductDetails<'a> {
    product_id: u64,
    product_name: &'a str,
    short_code: &'a str,
    authorization_method: &'static str,
    floating_timeout: u32,
    prevent_vm: bool,
}

/// `user` inside `license_json` (an object: a string would crash Python, spec §5.2).
#[derive(Debug, Clone, Serialize)]
struct UserObject<'a> {
    email: &'a str,
}

/// The license object of spec §5 (`license_json`, decoded), optionally with the fields a
/// register answer or a license-list entry adds at its top level. Never contains
/// `hardware_id`, `local_consumptions` or a string `user` (§5.2).
#[derive(Debug, Clone, Serialize)]
pub struct LicenseObject<'a> {
    id: u64,
    license_type: &'a str,
    is_floating: bool,
    is_floating_cloud: bool,
    floating_timeout: u32,
    floating_users: u32,
    floating_in_use_devices: usize,
    validity_period: Option<Micros>,
    start_date: Option<Micros>,
    maintenance_period: Null,
    enable_maintenance_period: bool,
    prevent_vm: bool,
    is_trial: bool,
    max_activations: u32,
    allow_unlimited_activations: bool,
    times_activated: u32,
    transfer_count: u32,
    max_transfers: u32,
    allow_grace_period: bool,
    grace_period: u32,
    can_borrow: bool,
    max_borrow_time: u32,
    is_borrowed: bool,
    borrowed_until: Option<Micros>,
    is_hardware_key_auth: bool,
    metadata: EmptyObject,
    customer: EmptyObject,
    custom_fields: [u8; 0],
    product_details: ProductDetails<'a>,
    product_features: Vec<FeatureObject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserObject<'a>>,
    #[serde(flatten)]
    consumption: Option<ConsumptionFields<'a>>,
    // Register answer (top level only).
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    floating_slots_in_use: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    floating_in_use: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_at: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_json: Option<LicenseJson>,
    // License list (admin) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    hardware_key_required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activation_hardware_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added_at: Option<Micros>,
}

impl<'a> LicenseObject<'a> {
    /// The license object of `l` with live counters.
    pub fn new(l: &'a License, seats_in_use: usize, feature_in_use: &BTreeMap<String, usize>) -> Self {
        let t = &*l.terms;
        let (license_key, user, authorization_method) = match &t.auth {
            Auth::Key { license_key } => (Some(license_key.as_str()), None, "license-key"),
            Auth::User { username, .. } => (None, Some(UserObject { email: username }), "user"),
        };
        Self {
            id: l.id,
            license_type: &t.license_type,
            is_floating: true,
            is_floating_cloud: false,
            floating_timeout: t.floating_timeout_minutes,
            floating_users: t.floating_users,
            floating_in_use_devices: seats_in_use,
            validity_period: t.valid_until.map(Micros),
            start_date: t.valid_from.map(Micros),
            maintenance_period: None,
            enable_maintenance_period: false,
            prevent_vm: false,
            is_trial: false,
            max_activations: 1,
            allow_unlimited_activations: false,
            times_activated: 1,
            transfer_count: 0,
            max_transfers: 0,
            allow_grace_period: false,
            grace_period: 0,
            can_borrow: t.max_borrow_time_hours > 0,
            max_borrow_time: t.max_borrow_time_hours,
            is_borrowed: false,
            borrowed_until: None,
            is_hardware_key_auth: t.hardware_key_required,
            metadata: EmptyObject {},
            customer: EmptyObject {},
            custom_fields: [],
            product_details: ProductDetails {
                product_id: 0,
                product_name: t.product_name.as_deref().unwrap_or(&t.product),
                short_code: &t.product,
                authorization_method,
                floating_timeout: t.floating_timeout_minutes,
                prevent_vm: false,
            },
            product_features: t
                .features
                .iter()
                .enumerate()
                .map(|(i, f)| FeatureObject::new(l, i, f, feature_in_use.get(&f.code).copied().unwrap_or(0)))
                .collect(),
            license_key,
            user,
            consumption: ConsumptionFields::of(l),
            product: None,
            license_id: None,
            floating_slots_in_use: None,
            floating_in_use: None,
            registered_at: None,
            license_json: None,
            hardware_key_required: None,
            activation_hardware_id: None,
            source: None,
            added_at: None,
        }
    }

    /// The register answer (spec §4.2): `license_json` is this object serialized (once),
    /// and its fields are repeated at the top level for node, with the seat's borrowing
    /// state and counters, and never a top-level `user`.
    pub fn register_answer(self, reg: &Registration, in_use: usize, now: i64) -> Self {
        // Written once into a buffer of about its size (a `String` would grow by doubling).
        let mut text = Vec::with_capacity(1536);
        let text = match serde_json::to_writer(&mut text, &self) {
            Ok(()) => String::from_utf8(text).unwrap_or_default(),
            Err(_) => String::new(),
        };
        self.register_answer_with(reg, in_use, now, LicenseJson::Text(text))
    }

    /// [`Self::register_answer`] with `license_json` already rendered (for this object).
    pub fn register_answer_with(mut self, reg: &Registration, in_use: usize, now: i64, json: LicenseJson) -> Self {
        self.license_json = Some(json);
        let borrowed = reg.borrowed_until.filter(|b| *b > now);
        self.user = None;
        self.product = Some(self.product_details.short_code);
        self.license_id = Some(self.id);
        self.floating_slots_in_use = Some(in_use);
        self.floating_in_use = Some(in_use);
        self.registered_at = Some(Micros(reg.registered_at));
        self.is_borrowed = borrowed.is_some();
        self.borrowed_until = borrowed.map(Micros);
        self
    }

    /// The license-list entry for admins: the license object plus server-side facts.
    pub fn list_entry(mut self, l: &'a License) -> Self {
        self.product = Some(&l.terms.product);
        self.license_id = Some(l.id);
        self.hardware_key_required = Some(l.terms.hardware_key_required);
        self.activation_hardware_id = Some(&l.activation_hardware_id);
        self.source = Some(l.source.as_str());
        self.added_at = Some(Micros(l.added_at));
        self
    }
}

/// The register answer's `license_json`: the license object as a JSON text.
#[derive(Debug, Clone)]
pub enum LicenseJson {
    /// Rendered for this answer.
    Text(String),
    /// Rendered before, for the same license and counters (see [`crate::render`]).
    Cached(Arc<crate::render::Rendered>),
}

impl Serialize for LicenseJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(text) => s.serialize_str(text),
            Self::Cached(r) => r.license_json().serialize(s),
        }
    }
}

/// The license object as a JSON map (tests and tools; the server writes [`LicenseObject`]).
pub fn license_object(
    l: &License,
    seats_in_use: usize,
    feature_in_use: &BTreeMap<String, usize>,
) -> Map<String, Value> {
    match serde_json::to_value(LicenseObject::new(l, seats_in_use, feature_in_use)) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> License {
        License {
            id: 7,
            terms: Arc::new(LicenseTerms {
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
            }),
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
