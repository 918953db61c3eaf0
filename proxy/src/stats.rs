//! Envoy-named statistics: counters, gauges and histograms in one store.
//!
//! Handles are resolved once, when config is translated (`store.counter("cluster.x.upstream_rq_total")`),
//! and the hot path only does a relaxed atomic add on a handle it already holds. The store keeps
//! a stat while anything references it; a stat nothing references any more (its cluster or
//! listener was removed) disappears from the next rendering, as in Envoy.

pub mod histogram;
pub mod render;
pub mod tags;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use histogram::Histogram;

/// Envoy's `stats_config.stats_matcher`: which stat names are instantiated.
#[derive(Debug, Default)]
pub enum StatsMatcher {
    #[default]
    All,
    None,
    Include(Vec<crate::matcher::StringMatcher>),
    Exclude(Vec<crate::matcher::StringMatcher>),
}

impl StatsMatcher {
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            StatsMatcher::All => true,
            StatsMatcher::None => false,
            StatsMatcher::Include(m) => m.iter().any(|m| m.matches(name)),
            StatsMatcher::Exclude(m) => !m.iter().any(|m| m.matches(name)),
        }
    }

    pub fn from_proto(
        p: &envoy_types::pb::envoy::config::metrics::v3::StatsMatcher,
    ) -> Result<Self, crate::config::ConfigError> {
        use envoy_types::pb::envoy::config::metrics::v3::stats_matcher::StatsMatcher as S;
        let list = |l: &envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher, f: &str| {
            l.patterns
                .iter()
                .enumerate()
                .map(|(i, m)| crate::matcher::StringMatcher::from_proto(m, &format!("{f}.patterns[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match &p.stats_matcher {
            None => StatsMatcher::All,
            Some(S::RejectAll(true)) => StatsMatcher::None,
            Some(S::RejectAll(false)) => StatsMatcher::All,
            Some(S::InclusionList(l)) => StatsMatcher::Include(list(l, "stats_config.stats_matcher.inclusion_list")?),
            Some(S::ExclusionList(l)) => StatsMatcher::Exclude(list(l, "stats_config.stats_matcher.exclusion_list")?),
        })
    }
}

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// A counter that belongs to no store (for tests and disabled stats).
    pub fn detached() -> Self {
        Counter(Arc::new(AtomicU64::new(0)))
    }
}

#[derive(Debug, Default)]
pub struct GaugeCell {
    value: AtomicI64,
    used: AtomicBool,
}

/// A value that goes up and down (`*_active`, `server.state`).
#[derive(Clone, Debug)]
pub struct Gauge(Arc<GaugeCell>);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.value.fetch_add(1, Ordering::Relaxed);
        self.mark_used();
    }
    #[inline]
    pub fn dec(&self) {
        self.0.value.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.value.store(v, Ordering::Relaxed);
        self.mark_used();
    }
    pub fn add(&self, v: i64) {
        self.0.value.fetch_add(v, Ordering::Relaxed);
        self.mark_used();
    }
    pub fn value(&self) -> i64 {
        self.0.value.load(Ordering::Relaxed)
    }
    fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
    #[inline]
    fn mark_used(&self) {
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
    pub fn detached() -> Self {
        Gauge(Arc::new(GaugeCell::default()))
    }
}

/// Keeps a gauge incremented while alive (`downstream_cx_active`, `upstream_rq_active`).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Default)]
struct Registry {
    counters: HashMap<Arc<str>, Counter>,
    gauges: HashMap<Arc<str>, Gauge>,
    histograms: HashMap<Arc<str>, Histogram>,
    /// Stats created with explicit tags (Istio's `istiocustom` namespace), by full name.
    tagged: HashMap<Arc<str>, Arc<Tagged>>,
}

/// A stat's explicit tags: Prometheus renders `family{k="v",...}` (custom stat namespaces
/// carry no `envoy_` prefix, as in Envoy).
#[derive(Debug)]
pub struct Tagged {
    pub family: String,
    pub tags: Vec<(&'static str, String)>,
}

/// The process-wide stat store.
#[derive(Default)]
pub struct Store {
    inner: Mutex<Registry>,
    tags: tags::TagExtractors,
    matcher: StatsMatcher,
}

/// One stat as rendered by the admin API.
#[derive(Debug, Clone)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(histogram::Snapshot),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Arc<str>,
    pub value: Value,
    pub used: bool,
    pub tagged: Option<Arc<Tagged>>,
}

impl Store {
    pub fn new(tags: tags::TagExtractors) -> Self {
        Store { inner: Mutex::default(), tags, matcher: StatsMatcher::All }
    }

    /// A store that only instantiates the stats `matcher` accepts (bootstrap `stats_matcher`);
    /// the others get detached handles that cost nothing and never show.
    pub fn with_matcher(tags: tags::TagExtractors, matcher: StatsMatcher) -> Self {
        Store { inner: Mutex::default(), tags, matcher }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the counter with this name, creating it at zero.
    pub fn counter(&self, name: &str) -> Counter {
        if !self.matcher.accepts(name) {
            return Counter::detached();
        }
        let mut r = self.registry();
        if let Some(c) = r.counters.get(name) {
            return c.clone();
        }
        let c = Counter(Arc::new(AtomicU64::new(0)));
        r.counters.insert(name.into(), c.clone());
        c
    }

    /// The counter `<namespace>.<family>` with explicit tags (text name: the tags appended as
    /// `.<name>.<value>`), creating it at zero.
    pub fn counter_tagged(&self, namespace: &str, family: &str, tags: Vec<(&'static str, String)>) -> Counter {
        let name = tagged_name(namespace, family, &tags);
        if !self.matcher.accepts(&name) {
            return Counter::detached();
        }
        let mut r = self.registry();
        if let Some(c) = r.counters.get(name.as_str()) {
            return c.clone();
        }
        let c = Counter(Arc::new(AtomicU64::new(0)));
        let name: Arc<str> = name.into();
        r.counters.insert(name.clone(), c.clone());
        r.tagged.insert(name, Arc::new(Tagged { family: family.to_string(), tags }));
        c
    }

    /// The histogram `<namespace>.<family>` with explicit tags (as `counter_tagged`).
    pub fn histogram_tagged(&self, namespace: &str, family: &str, tags: Vec<(&'static str, String)>) -> Histogram {
        let name = tagged_name(namespace, family, &tags);
        if !self.matcher.accepts(&name) {
            return Histogram::new();
        }
        let mut r = self.registry();
        if let Some(h) = r.histograms.get(name.as_str()) {
            return h.clone();
        }
        let h = Histogram::new();
        let name: Arc<str> = name.into();
        r.histograms.insert(name.clone(), h.clone());
        r.tagged.insert(name, Arc::new(Tagged { family: family.to_string(), tags }));
        h
    }

    pub fn gauge(&self, name: &str) -> Gauge {
        if !self.matcher.accepts(name) {
            return Gauge::detached();
        }
        let mut r = self.registry();
        if let Some(g) = r.gauges.get(name) {
            return g.clone();
        }
        let g = Gauge(Arc::new(GaugeCell::default()));
        r.gauges.insert(name.into(), g.clone());
        g
    }

    pub fn histogram(&self, name: &str) -> Histogram {
        if !self.matcher.accepts(name) {
            return Histogram::new();
        }
        let mut r = self.registry();
        if let Some(h) = r.histograms.get(name) {
            return h.clone();
        }
        let h = Histogram::new();
        r.histograms.insert(name.into(), h.clone());
        h
    }

    /// The current value of a counter or gauge, if it exists (for tests and readiness).
    pub fn value_of(&self, name: &str) -> Option<i64> {
        let r = self.registry();
        if let Some(c) = r.counters.get(name) {
            return Some(c.value() as i64);
        }
        r.gauges.get(name).map(Gauge::value)
    }

    /// A point-in-time copy of every live stat, sorted by name. Stats that nothing references any
    /// more are dropped from the store here.
    pub fn entries(&self) -> Vec<Entry> {
        let mut r = self.registry();
        r.counters.retain(|_, c| Arc::strong_count(&c.0) > 1 || c.value() > 0);
        let Registry { counters, tagged, histograms, .. } = &mut *r;
        // A tagged histogram with values outlives its handles, as a counter does.
        histograms.retain(|n, h| h.strong_count() > 1 || (tagged.contains_key(n) && h.snapshot().count > 0));
        tagged.retain(|n, _| counters.contains_key(n) || histograms.contains_key(n));
        r.gauges.retain(|_, g| Arc::strong_count(&g.0) > 1);
        let mut out = Vec::with_capacity(r.counters.len() + r.gauges.len() + r.histograms.len());
        for (n, c) in &r.counters {
            let v = c.value();
            let tagged = r.tagged.get(n).cloned();
            out.push(Entry { name: n.clone(), value: Value::Counter(v), used: v > 0, tagged });
        }
        for (n, g) in &r.gauges {
            out.push(Entry { name: n.clone(), value: Value::Gauge(g.value()), used: g.used(), tagged: None });
        }
        for (n, h) in &r.histograms {
            let s = h.snapshot();
            let used = s.count > 0;
            let tagged = r.tagged.get(n).cloned();
            out.push(Entry { name: n.clone(), value: Value::Histogram(s), used, tagged });
        }
        drop(r);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn tag_extractors(&self) -> &tags::TagExtractors {
        &self.tags
    }
}

/// `<namespace>.<family>.<tag>.<value>...`: the text name of an explicitly tagged stat.
fn tagged_name(namespace: &str, family: &str, tags: &[(&'static str, String)]) -> String {
    let mut name = format!("{namespace}.{family}");
    for (k, v) in tags {
        name.push('.');
        name.push_str(k);
        name.push('.');
        name.push_str(v);
    }
    name
}

/// `<prefix>_2xx`-style class counters plus per-code counters (`<prefix>_200`) created on first
/// use; reading an existing per-code counter is lock-free.
pub struct CodeStats {
    prefix: String,
    store: Arc<Store>,
    classes: [Counter; 5],
    codes: arc_swap::ArcSwap<crate::FastMap<u16, Counter>>,
    insert: Mutex<()>,
}

impl std::fmt::Debug for CodeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeStats").field("prefix", &self.prefix).finish()
    }
}

impl CodeStats {
    /// `prefix` like `cluster.x.upstream_rq` (the `_2xx` / `_200` suffixes are appended).
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let c = |k: u8| store.counter(&format!("{prefix}_{k}xx"));
        CodeStats {
            prefix: prefix.to_string(),
            store: store.clone(),
            classes: [c(1), c(2), c(3), c(4), c(5)],
            codes: arc_swap::ArcSwap::from_pointee(crate::FastMap::default()),
            insert: Mutex::new(()),
        }
    }

    /// Counts one response with this status (class and exact code).
    pub fn record(&self, status: u16, with_code: bool) {
        if let Some(c) = self.classes.get((status / 100).wrapping_sub(1) as usize) {
            c.inc();
        }
        if !with_code {
            return;
        }
        if let Some(c) = self.codes.load().get(&status) {
            c.inc();
            return;
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = crate::FastMap::clone(&self.codes.load());
        let c = m.entry(status).or_insert_with(|| self.store.counter(&format!("{}_{status}", self.prefix))).clone();
        self.codes.store(Arc::new(m));
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_matcher_inclusion_list() {
        let m = StatsMatcher::Include(vec![crate::matcher::StringMatcher::Prefix("server".into(), false)]);
        let s = Store::with_matcher(tags::TagExtractors::default(), m);
        s.counter("server.live").inc();
        s.counter("cluster.x.upstream_rq_total").inc();
        let names: Vec<_> = s.entries().into_iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, ["server.live"]);
    }

    #[test]
    fn counters_and_gauges_share_handles_and_disappear_when_unreferenced() {
        let s = Store::default();
        let c = s.counter("a.b");
        c.inc();
        s.counter("a.b").add(2);
        assert_eq!(s.value_of("a.b"), Some(3));
        let g = s.gauge("g");
        {
            let _guard = GaugeGuard::new(&g);
            assert_eq!(g.value(), 1);
        }
        assert_eq!(g.value(), 0);
        let _unused = s.counter("never");
        let e = s.entries();
        assert_eq!(e.iter().map(|e| &*e.name).collect::<Vec<_>>(), ["a.b", "g", "never"]);
        assert!(e[0].used && e[1].used && !e[2].used);
        drop(g);
        drop(_unused);
        assert_eq!(s.entries().len(), 1, "a counter with a value outlives its handles");
    }
}
