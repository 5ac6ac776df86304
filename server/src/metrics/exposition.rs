//! The Prometheus text exposition (format 0.0.4), written by `prometheus-client` (HELP and
//! TYPE lines, `_total` suffixes, label escaping). Every family is a scrape-time
//! [`Collector`] over values read once per scrape: the key cell's snapshot, the licenses'
//! usage and the app's counters; nothing on the request path maintains a gauge.

use std::collections::BTreeMap;

use keyfloat_hal::{KeyState, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::middleware::GATE_CODE;
use super::registry::RequestKey;
use super::{unix_ms, Metrics};

/// The `Content-Type` of the exposition.
pub(super) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Usage of one license at scrape time.
#[derive(Debug, Clone)]
pub(super) struct LicenseUsage {
    pub(super) id: u64,
    pub(super) product: String,
    pub(super) key_bound: bool,
    pub(super) seats_used: usize,
    pub(super) seats_total: u32,
    pub(super) consumptions: Option<i64>,
    pub(super) features: BTreeMap<String, i64>,
}

type Labels = Vec<(&'static str, String)>;

impl LicenseUsage {
    fn labels(&self) -> Labels {
        vec![
            ("license_id", self.id.to_string()),
            ("product", self.product.clone()),
            ("hardware_key", self.key_bound.to_string()),
        ]
    }
}

/// One metric family: its descriptor, then one sample per label set (none = unlabelled).
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        // An empty label set writes no braces.
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(enc, name, help, MetricType::Gauge, samples)
}

/// `name` without its `_total`: the encoder appends it to counters.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(enc, name, help, MetricType::Counter, samples)
}

/// The key cell at scrape time.
#[derive(Debug)]
struct KeyFamilies {
    state: KeyState,
    backend: String,
    grace_seconds_left: u64,
    valid: bool,
    attached: usize,
    generation: u64,
}

impl Collector for KeyFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = [
            KeyState::Valid,
            KeyState::Absent,
            KeyState::Validating,
            KeyState::Invalid,
            KeyState::Error,
            KeyState::Grace,
        ];
        gauge(
            &mut enc,
            "keyfloat_key_state",
            "Current hardware key state (1 for the current state).",
            states.map(|s| {
                let labels = vec![("state", s.as_str().to_owned()), ("backend", self.backend.clone())];
                (labels, u32::from(s == self.state))
            }),
        )?;
        let one = |v: u64| [(Labels::new(), v)];
        gauge(
            &mut enc,
            "keyfloat_key_grace_seconds_left",
            "Seconds left in the key grace period (0 when none).",
            one(self.grace_seconds_left),
        )?;
        gauge(
            &mut enc,
            "keyfloat_key_valid",
            "1 while a validated hardware key is in force.",
            one(u64::from(self.valid)),
        )?;
        gauge(
            &mut enc,
            "keyfloat_keys_attached",
            "Keys attached now.",
            one(self.attached as u64),
        )?;
        // A gauge, not a counter: a counter's name would have to end in `_total`.
        gauge(
            &mut enc,
            "keyfloat_key_cell_generation",
            "Publications of the key cell (every hot-plug or re-validation change).",
            one(self.generation),
        )
    }
}

/// Per-license series (left out when `hide_license_labels` is set).
#[derive(Debug)]
struct LicenseFamilies(Vec<LicenseUsage>);

impl Collector for LicenseFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = &self.0;
        gauge(
            &mut enc,
            "keyfloat_license_seats_in_use",
            "Floating seats in use.",
            all.iter().map(|l| (l.labels(), l.seats_used as u64)),
        )?;
        gauge(
            &mut enc,
            "keyfloat_license_seats_total",
            "Floating seats of the license.",
            all.iter().map(|l| (l.labels(), l.seats_total)),
        )?;
        gauge(
            &mut enc,
            "keyfloat_license_consumptions",
            "Consumptions recorded on the license.",
            all.iter().filter_map(|l| Some((l.labels(), l.consumptions?))),
        )?;
        let features = all.iter().flat_map(|l| {
            l.features.iter().map(|(f, c)| {
                let mut labels = l.labels();
                labels.push(("feature", f.clone()));
                (labels, *c)
            })
        });
        gauge(
            &mut enc,
            "keyfloat_feature_consumptions",
            "Consumptions recorded on a feature.",
            features,
        )
    }
}

/// The app's counters, copied at scrape time.
#[derive(Debug)]
struct CounterFamilies {
    key_events: BTreeMap<(&'static str, String), u64>,
    requests: BTreeMap<RequestKey, u64>,
}

impl CounterFamilies {
    fn key_events(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
        for ((event, _), n) in &self.key_events {
            *by_event.entry(event).or_default() += n;
        }
        counter(
            enc,
            "keyfloat_key_events",
            "Key events seen by the watcher.",
            by_event.iter().map(|(e, n)| (vec![("event", (*e).to_owned())], *n)),
        )?;
        let failures = self
            .key_events
            .iter()
            .filter(|((event, _), _)| matches!(*event, "invalid" | "contended" | "error"))
            .map(|((_, reason), n)| (vec![("reason", reason.clone())], *n));
        counter(
            enc,
            "keyfloat_key_validation_failures",
            "Keys found invalid or unreadable, by reason.",
            failures,
        )
    }

    fn requests(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_status: BTreeMap<(&str, &str, u16), u64> = BTreeMap::new();
        for (k, n) in &self.requests {
            *by_status.entry((&k.route, k.method, k.status)).or_default() += n;
        }
        let requests = by_status.iter().map(|((route, method, status), n)| {
            let labels = vec![
                ("route", (*route).to_owned()),
                ("method", (*method).to_owned()),
                ("status", status.to_string()),
            ];
            (labels, *n)
        });
        counter(
            enc,
            "keyfloat_http_requests",
            "HTTP requests by route, method and status.",
            requests,
        )?;
        let errors: Vec<_> = self.requests.iter().filter(|(k, _)| k.status >= 400).collect();
        let by_code = errors.iter().map(|(k, n)| {
            let code = if k.code.is_empty() { "unknown" } else { k.code };
            let labels = vec![
                ("route", k.route.clone()),
                ("status", k.status.to_string()),
                ("code", code.to_owned()),
            ];
            (labels, **n)
        });
        counter(
            enc,
            "keyfloat_http_errors",
            "Error answers by route and error code.",
            by_code,
        )?;
        let mut gate: BTreeMap<&str, u64> = BTreeMap::new();
        for (k, n) in errors.iter().filter(|(k, _)| k.code == GATE_CODE) {
            *gate.entry(&k.route).or_default() += **n;
        }
        counter(
            enc,
            "keyfloat_gate_refusals",
            "Actions refused because the license's hardware key is not accessible.",
            gate.iter().map(|(route, n)| (vec![("route", (*route).to_owned())], *n)),
        )
    }
}

impl Collector for CounterFamilies {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.key_events(&mut enc)?;
        self.requests(&mut enc)
    }
}

/// Renders the exposition text of one scrape.
pub(super) fn render(m: &Metrics, snap: &Snapshot, backend: &str, licenses: Vec<LicenseUsage>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KeyFamilies {
        state: snap.state(),
        backend: backend.to_owned(),
        grace_seconds_left: snap.grace.as_ref().map_or(0, |g| g.seconds_left(unix_ms())),
        valid: snap.in_force.is_some(),
        attached: snap.keys.len(),
        generation: snap.generation,
    }));
    registry.register_collector(Box::new(LicenseFamilies(licenses)));
    registry.register_collector(Box::new(CounterFamilies {
        key_events: m.key_events(),
        requests: m.requests(),
    }));
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail, and every collector above only writes.
    if prometheus_text::encode(&mut out, &registry).is_err() {
        tracing::error!("cannot encode the metrics exposition");
    }
    out
}
