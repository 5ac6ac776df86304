//! Rendered license objects, reused while a license and its counters stay the same.
//!
//! A heartbeat's answer embeds the whole license object twice (its fields, and
//! `license_json`: the object as a JSON text, escaped into a string), and the license list
//! renders every license on every call. Between two changes of a license (a seat taken or
//! lapsed, a consumption, a re-add) those bytes do not change, so they are rendered once
//! and reused. An entry is valid while the license (terms by identity, totals by value)
//! and its counters equal the ones it was rendered from: no invalidation to forget.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use serde_json::value::RawValue;

use crate::model::{License, LicenseObject};

/// Entries kept at most; beyond it the cache starts again (licenses removed long ago
/// must not pin memory).
const MAX_ENTRIES: usize = 4096;

/// One license rendered at given counters.
#[derive(Debug)]
pub struct Rendered {
    license: License,
    in_use: usize,
    features: BTreeMap<String, usize>,
    /// `license_json`: the object's JSON text as a JSON string literal.
    license_json: Box<RawValue>,
    /// The admin list entry, rendered on first use.
    list_entry: OnceLock<Box<RawValue>>,
}

fn raw(json: Result<Box<RawValue>, serde_json::Error>) -> Box<RawValue> {
    json.unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl Rendered {
    fn new(license: &License, in_use: usize, features: &BTreeMap<String, usize>) -> Self {
        let text = serde_json::to_string(&LicenseObject::new(license, in_use, features)).unwrap_or_default();
        Self {
            license: license.clone(),
            in_use,
            features: features.clone(),
            license_json: raw(serde_json::value::to_raw_value(&text)),
            list_entry: OnceLock::new(),
        }
    }

    fn matches(&self, license: &License, in_use: usize, features: &BTreeMap<String, usize>) -> bool {
        // `terms` compare by pointer first (an `Arc` of an `Eq` type): the common case is cheap.
        self.in_use == in_use && self.features == *features && self.license == *license
    }

    /// The license object as a JSON string literal (the register answer's `license_json`).
    pub fn license_json(&self) -> &RawValue {
        &self.license_json
    }

    /// The license's entry of the admin license list.
    pub fn list_entry(&self) -> &RawValue {
        self.list_entry.get_or_init(|| {
            let entry = LicenseObject::new(&self.license, self.in_use, &self.features).list_entry(&self.license);
            raw(serde_json::value::to_raw_value(&entry))
        })
    }
}

/// The rendered license objects, by license id.
#[derive(Debug, Default)]
pub struct RenderCache {
    by_license: RwLock<HashMap<u64, Arc<Rendered>>>,
}

impl RenderCache {
    /// `license` at these counters, rendered now or reused.
    pub fn get(&self, license: &License, in_use: usize, features: &BTreeMap<String, usize>) -> Arc<Rendered> {
        if let Some(r) = self.by_license.read().get(&license.id) {
            if r.matches(license, in_use, features) {
                return Arc::clone(r);
            }
        }
        let fresh = Arc::new(Rendered::new(license, in_use, features));
        let mut map = self.by_license.write();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(license.id, Arc::clone(&fresh));
        fresh
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::tests::sample as sample_license;

    #[test]
    fn an_entry_is_reused_only_while_license_and_counters_are_unchanged() {
        let cache = RenderCache::default();
        let l = sample_license();
        let none = BTreeMap::new();
        let a = cache.get(&l, 1, &none);
        assert!(Arc::ptr_eq(&a, &cache.get(&l, 1, &none)));
        assert!(!Arc::ptr_eq(&a, &cache.get(&l, 2, &none)), "another seat count");
        let b = cache.get(&l, 2, &none);
        let more = License {
            total_consumptions: l.total_consumptions + 1,
            ..l.clone()
        };
        assert!(!Arc::ptr_eq(&b, &cache.get(&more, 2, &none)), "another total");
        let slots = BTreeMap::from([("f".to_owned(), 1)]);
        assert!(!Arc::ptr_eq(&cache.get(&more, 2, &none), &cache.get(&more, 2, &slots)));
    }

    #[test]
    fn the_cached_renderings_equal_fresh_ones() {
        let cache = RenderCache::default();
        let l = sample_license();
        let slots = BTreeMap::from([("f".to_owned(), 1)]);
        let r = cache.get(&l, 3, &slots);
        let fresh = serde_json::to_string(&LicenseObject::new(&l, 3, &slots)).unwrap();
        let text: String = serde_json::from_str(r.license_json().get()).unwrap();
        assert_eq!(text, fresh);
        let entry = serde_json::to_string(&LicenseObject::new(&l, 3, &slots).list_entry(&l)).unwrap();
        assert_eq!(r.list_entry().get(), entry);
    }
}
