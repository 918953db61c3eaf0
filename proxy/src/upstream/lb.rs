//! Load balancers: ROUND_ROBIN (weighted), LEAST_REQUEST (power of two choices), RANDOM,
//! RING_HASH and MAGLEV. Their state is computed once per membership change and lives in the
//! host set; picking a host is lock-free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use xxhash_rust::xxh64::xxh64;

use super::host::{Host, HostSet, PriorityHosts};
use crate::config::ConfigError;

pub mod priority;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { min_ring: u64, max_ring: u64 },
    Maglev { table_size: u64 },
}

impl LbPolicy {
    pub fn from_proto(c: &ClusterProto, field: &str) -> Result<Self, ConfigError> {
        use cluster::LbPolicy as P;
        Ok(match P::try_from(c.lb_policy) {
            Ok(P::RoundRobin) => LbPolicy::RoundRobin,
            Ok(P::LeastRequest) => {
                let choice_count = match &c.lb_config {
                    Some(cluster::LbConfig::LeastRequestLbConfig(l)) => l.choice_count.map(|c| c.value).unwrap_or(2),
                    _ => 2,
                };
                LbPolicy::LeastRequest { choice_count: choice_count.max(2) }
            }
            Ok(P::Random) => LbPolicy::Random,
            Ok(P::RingHash) => {
                let (min_ring, max_ring) = match &c.lb_config {
                    Some(cluster::LbConfig::RingHashLbConfig(r)) => (
                        r.minimum_ring_size.map(|v| v.value).unwrap_or(1024),
                        r.maximum_ring_size.map(|v| v.value).unwrap_or(8 * 1024 * 1024),
                    ),
                    _ => (1024, 8 * 1024 * 1024),
                };
                if min_ring > max_ring {
                    return Err(ConfigError::new(
                        format!("{field}.ring_hash_lb_config"),
                        "minimum_ring_size > maximum_ring_size",
                    ));
                }
                LbPolicy::RingHash { min_ring, max_ring: max_ring.min(8 * 1024 * 1024) }
            }
            Ok(P::Maglev) => {
                let table_size = match &c.lb_config {
                    Some(cluster::LbConfig::MaglevLbConfig(m)) => m.table_size.map(|v| v.value).unwrap_or(65537),
                    _ => 65537,
                };
                LbPolicy::Maglev { table_size }
            }
            Ok(P::ClusterProvided) => LbPolicy::RoundRobin,
            Ok(P::LoadBalancingPolicyConfig) => {
                return Err(ConfigError::new(
                    format!("{field}.load_balancing_policy"),
                    "load_balancing_policy is not supported yet",
                ));
            }
            Err(_) => {
                return Err(ConfigError::new(format!("{field}.lb_policy"), "unknown lb_policy"));
            }
        })
    }

    pub fn uses_hash(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// How a cluster balances: the policy, `common_lb_config.healthy_panic_threshold` and
/// `locality_weighted_lb_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbConfig {
    pub policy: LbPolicy,
    /// Percent (0-100, Envoy's default 50): a level with fewer available hosts is in panic.
    pub panic_threshold: u32,
    pub locality_weighted: bool,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig { policy: LbPolicy::RoundRobin, panic_threshold: 50, locality_weighted: false }
    }
}

/// The EDS `ClusterLoadAssignment.policy` parts the priority load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Percent (Envoy's default 140): a level counts as fully healthy from 100/140 available.
    pub overprovisioning_factor: u32,
    /// Level health by host weight rather than host count.
    pub weighted_priority_health: bool,
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        EndpointPolicy { overprovisioning_factor: 140, weighted_priority_health: false }
    }
}

/// Precomputed per-priority state.
#[derive(Debug)]
pub enum LbState {
    /// Index into `schedule` (weighted) or the host list (unweighted).
    RoundRobin {
        schedule: Option<Vec<u32>>,
        next: AtomicU64,
    },
    Plain,
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

impl LbState {
    /// The state over `hosts`; `weights` are the hash policies' normalized host weights (the
    /// hosts' own weights when None).
    pub fn build(policy: LbPolicy, hosts: &[Arc<Host>], weights: Option<&[f64]>) -> Self {
        let own: Vec<f64>;
        let weights = match weights {
            Some(w) => w,
            None => {
                let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
                own = hosts.iter().map(|h| f64::from(h.weight) / total).collect();
                &own
            }
        };
        match policy {
            LbPolicy::RoundRobin => {
                let weighted = hosts.windows(2).any(|w| w[0].weight != w[1].weight);
                let schedule =
                    weighted.then(|| smooth_schedule(&hosts.iter().map(|h| u64::from(h.weight)).collect::<Vec<_>>()));
                // Start at a random offset so proxies do not all hit the first host first.
                LbState::RoundRobin { schedule, next: AtomicU64::new(fastrand::u64(..)) }
            }
            LbPolicy::LeastRequest { .. } | LbPolicy::Random => LbState::Plain,
            LbPolicy::RingHash { min_ring, max_ring } => LbState::Ring(build_ring(hosts, weights, min_ring, max_ring)),
            LbPolicy::Maglev { table_size } => LbState::Maglev(build_maglev(hosts, weights, table_size)),
        }
    }
}

/// Locality-weighted picking for one level: a locality first, by its weight scaled by its
/// availability (Envoy's effective locality weight), then a host in it by the policy.
#[derive(Debug)]
pub struct Localities {
    groups: Vec<(Vec<Arc<Host>>, LbState)>,
    schedule: Vec<u32>,
    next: AtomicU64,
}

impl Localities {
    /// None when no locality has an effective weight (Envoy then picks over the whole level).
    fn build(policy: LbPolicy, hosts: &[Arc<Host>], overprovisioning: u32) -> Option<Localities> {
        // (locality, its weight, host count, available hosts)
        type Group<'a> = (Option<&'a Arc<super::host::Locality>>, u32, usize, Vec<Arc<Host>>);
        let mut by_locality: Vec<Group<'_>> = Vec::new();
        for h in hosts {
            let i = match by_locality.iter().position(|(l, ..)| *l == h.locality.as_ref()) {
                Some(i) => i,
                None => {
                    by_locality.push((h.locality.as_ref(), 0, 0, Vec::new()));
                    by_locality.len() - 1
                }
            };
            let e = &mut by_locality[i];
            e.1 = h.locality_weight;
            e.2 += 1;
            if h.available() {
                e.3.push(h.clone());
            }
        }
        let mut groups = Vec::new();
        let mut weights = Vec::new();
        for (_, weight, total, available) in by_locality {
            let ratio = (f64::from(overprovisioning) / 100.0 * available.len() as f64 / total as f64).min(1.0);
            let effective = f64::from(weight) * ratio;
            if effective > 0.0 && !available.is_empty() {
                weights.push((effective * 1000.0).round().max(1.0) as u64);
                let lb = LbState::build(policy, &available, None);
                groups.push((available, lb));
            }
        }
        if groups.is_empty() {
            return None;
        }
        Some(Localities { schedule: smooth_schedule(&weights), groups, next: AtomicU64::new(fastrand::u64(..)) })
    }

    fn pick(&self) -> Option<&(Vec<Arc<Host>>, LbState)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = self.schedule.get((n % self.schedule.len().max(1) as u64) as usize).copied().unwrap_or(0);
        self.groups.get(i as usize)
    }
}

/// Builds the snapshot the load balancers read: per level the available hosts, the panic flag
/// and the LB state, and the priority load (Envoy's `recalculatePerPriorityState` and
/// `recalculatePerPriorityPanic`, without degraded hosts).
pub fn build_host_set(all: Vec<Arc<Host>>, cfg: &LbConfig, ep: EndpointPolicy) -> HostSet {
    let mut levels: Vec<u32> = all.iter().map(|h| h.priority).collect();
    levels.sort_unstable();
    levels.dedup();
    let grouped: Vec<(u32, Vec<Arc<Host>>)> =
        levels.into_iter().map(|p| (p, all.iter().filter(|h| h.priority == p).cloned().collect())).collect();
    let counts: Vec<priority::Level> = grouped
        .iter()
        .map(|(_, hosts)| {
            let unit = |h: &Arc<Host>| if ep.weighted_priority_health { u64::from(h.weight) } else { 1 };
            let counted = || hosts.iter().filter(|h| !h.excluded());
            priority::Level {
                healthy: counted().filter(|h| h.available()).map(unit).sum(),
                degraded: counted().filter(|h| h.degraded()).map(unit).sum(),
                total: counted().map(unit).sum(),
                healthy_hosts: counted().filter(|h| h.available()).count(),
                degraded_hosts: counted().filter(|h| h.degraded()).count(),
                total_hosts: counted().count(),
            }
        })
        .collect();
    let loads = priority::loads(&counts, cfg.panic_threshold, ep.overprovisioning_factor);
    let priorities = grouped
        .into_iter()
        .zip(&loads.panic)
        .map(|((priority, hosts), &panic)| {
            let available = hosts.iter().filter(|h| h.available()).count();
            let pick: Vec<Arc<Host>> =
                if panic { hosts.clone() } else { hosts.iter().filter(|h| h.available()).cloned().collect() };
            let weights = (cfg.locality_weighted && cfg.policy.uses_hash()).then(|| locality_normalized(&pick));
            let (pick, weights) = match weights {
                // Hosts of zero-weight localities take no part (Envoy's normalizeLocalityWeights).
                Some(w) => pick.into_iter().zip(w).filter(|(_, w)| *w > 0.0).unzip(),
                None => (pick, Vec::new()),
            };
            let lb = LbState::build(cfg.policy, &pick, (!weights.is_empty()).then_some(&weights[..]));
            let localities = (cfg.locality_weighted && !panic && !cfg.policy.uses_hash())
                .then(|| Localities::build(cfg.policy, &hosts, ep.overprovisioning_factor))
                .flatten();
            let degraded: Vec<Arc<Host>> = hosts.iter().filter(|h| h.degraded()).cloned().collect();
            let degraded_lb = LbState::build(cfg.policy, &degraded, None);
            PriorityHosts { priority, hosts, available, panic, pick, lb, localities, degraded, degraded_lb }
        })
        .collect();
    let empty_panic = all.is_empty() && cfg.panic_threshold > 0;
    HostSet {
        all,
        priorities,
        load: loads.healthy,
        degraded_load: loads.degraded,
        empty_panic,
        levels: counts,
        panic_threshold: cfg.panic_threshold,
        overprovisioning: ep.overprovisioning_factor,
    }
}

/// Per level: the load percentages and panic flags, from the available and total host counts
/// (panic) and the (available, total) health units, counts or weights (load), with no degraded
/// hosts.
pub fn priority_load(
    available: &[usize],
    totals: &[usize],
    units: &[(u64, u64)],
    threshold: u32,
    overprovisioning: u32,
) -> (Vec<u32>, Vec<bool>) {
    let levels: Vec<priority::Level> = available
        .iter()
        .zip(totals)
        .zip(units)
        .map(|((&a, &t), &(ua, ut))| priority::Level {
            healthy: ua,
            degraded: 0,
            total: ut,
            healthy_hosts: a,
            degraded_hosts: 0,
            total_hosts: t,
        })
        .collect();
    let l = priority::loads(&levels, threshold, overprovisioning);
    (l.healthy, l.panic)
}

/// Hash policies with locality weighting: host weight x locality share / host weights of the
/// locality (Envoy's `normalizeLocalityWeights`; all-zero locality weights leave no host).
fn locality_normalized(hosts: &[Arc<Host>]) -> Vec<f64> {
    let mut localities: Vec<(Option<&Arc<super::host::Locality>>, u32, u64)> = Vec::new();
    for h in hosts {
        match localities.iter_mut().find(|(l, ..)| *l == h.locality.as_ref()) {
            Some(e) => {
                e.1 = h.locality_weight;
                e.2 += u64::from(h.weight);
            }
            None => localities.push((h.locality.as_ref(), h.locality_weight, u64::from(h.weight))),
        }
    }
    let sum: u64 = localities.iter().map(|l| u64::from(l.1)).sum();
    hosts
        .iter()
        .map(|h| match localities.iter().find(|(l, ..)| *l == h.locality.as_ref()) {
            Some((_, w, host_sum)) if sum > 0 && *w > 0 => {
                f64::from(h.weight) * (f64::from(*w) / sum as f64) / *host_sum as f64
            }
            _ => 0.0,
        })
        .collect()
}

/// An interleaved schedule where each index appears proportionally to its weight (smooth
/// weighted round robin), bounded in length.
fn smooth_schedule(raw: &[u64]) -> Vec<u32> {
    let g = raw.iter().fold(0u64, |g, w| gcd(g, *w)).max(1);
    let mut weights: Vec<i64> = raw.iter().map(|w| (w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total > 10_000 {
        let scale = total as f64 / 10_000.0;
        for w in &mut weights {
            *w = ((*w as f64 / scale).round() as i64).max(1);
        }
    }
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Envoy's ketama-style ring: each host gets `ring_size * normalized weight` entries hashed
/// from `"<address>_<i>"` with xxHash64.
fn build_ring(hosts: &[Arc<Host>], weights: &[f64], min_ring: u64, max_ring: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let min_norm = weights.iter().copied().fold(f64::MAX, f64::min);
    if min_norm <= 0.0 {
        return Vec::new();
    }
    let scale = ((min_ring as f64 * min_norm).ceil() / min_norm).min(max_ring as f64);
    let mut ring = Vec::with_capacity(scale as usize + hosts.len());
    let mut current = 0.0;
    let mut target = 0.0;
    for (i, (h, w)) in hosts.iter().zip(weights).enumerate() {
        let addr = h.address_string();
        target += scale * w;
        let mut n = 0u64;
        while current < target {
            let key = format!("{addr}_{n}");
            ring.push((xxh64(key.as_bytes(), 0), i as u32));
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable_by_key(|e| e.0);
    ring
}

/// Maglev lookup table (Eisenbud et al.), weights honoured by letting heavier hosts take more
/// turns, as Envoy does.
fn build_maglev(hosts: &[Arc<Host>], weights: &[f64], table_size: u64) -> Vec<u32> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let m = table_size.max(1);
    // Envoy's weighting: a host takes a turn in an iteration once its running target
    // (advanced by the largest weight per turn) allows it.
    let max_w = weights.iter().cloned().fold(0.0, f64::max);
    if max_w <= 0.0 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = hosts
        .iter()
        .map(|h| {
            let a = h.address_string();
            let offset = xxh64(a.as_bytes(), 0) % m;
            let skip = xxh64(a.as_bytes(), 1) % (m.saturating_sub(1).max(1)) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; hosts.len()];
    let mut target_weight = vec![0f64; hosts.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    let mut iteration = 1u64;
    while filled < m {
        for i in 0..hosts.len() {
            if filled >= m {
                break;
            }
            if (iteration as f64) * weights[i] < target_weight[i] {
                continue;
            }
            target_weight[i] += max_w;
            let (offset, skip) = perms[i];
            loop {
                let c = (offset + next[i] * skip) % m;
                next[i] += 1;
                if table[c as usize] == u32::MAX {
                    table[c as usize] = i as u32;
                    filled += 1;
                    break;
                }
            }
        }
        iteration += 1;
    }
    table
}

/// A pick: the host (None when there is nothing to pick from) and whether the chosen level was
/// in panic (counted in `lb_healthy_panic`).
pub struct Pick {
    pub host: Option<Arc<Host>>,
    pub panic: bool,
}

/// Picks a host from a host set. `hash` is the request's hash key (for hash policies);
/// `avoid` lists hosts to skip when the previous-hosts retry predicate is on.
pub fn choose(policy: LbPolicy, set: &HostSet, hash: Option<u64>, avoid: &[u64]) -> Pick {
    choose_with_loads(policy, set, hash, avoid, &set.load, &set.degraded_load)
}

/// `choose` for a retry under `envoy.retry_priorities.previous_priorities`: the priority loads
/// are recomputed as if the `excluded` levels had no healthy or degraded hosts (Envoy's
/// `PreviousPrioritiesRetryPriority`); when that leaves nothing, the normal loads apply.
pub fn choose_excluding(policy: LbPolicy, set: &HostSet, hash: Option<u64>, avoid: &[u64], excluded: &[u32]) -> Pick {
    if excluded.is_empty() || set.priorities.len() < 2 {
        return choose(policy, set, hash, avoid);
    }
    let levels: Vec<priority::Level> = set
        .levels
        .iter()
        .zip(&set.priorities)
        .map(|(l, p)| {
            if excluded.contains(&p.priority) {
                priority::Level { healthy: 0, degraded: 0, healthy_hosts: 0, degraded_hosts: 0, ..*l }
            } else {
                *l
            }
        })
        .collect();
    if levels.iter().all(|l| l.healthy == 0 && l.degraded == 0) {
        return choose(policy, set, hash, avoid);
    }
    let loads = priority::loads(&levels, set.panic_threshold, set.overprovisioning);
    choose_with_loads(policy, set, hash, avoid, &loads.healthy, &loads.degraded)
}

fn choose_with_loads(
    policy: LbPolicy,
    set: &HostSet,
    hash: Option<u64>,
    avoid: &[u64],
    load: &[u32],
    degraded_load: &[u32],
) -> Pick {
    let (level, degraded) = match set.priorities.len() {
        0 => return Pick { host: None, panic: set.empty_panic },
        1 if degraded_load.first().is_none_or(|l| *l == 0) => (&set.priorities[0], false),
        _ => {
            // Envoy: the hash (or a random number) modulo 100 against the cumulative load, the
            // healthy loads of every level first, then the degraded ones.
            let h = hash.unwrap_or_else(|| fastrand::u64(..)) % 100 + 1;
            let mut acc = 0u64;
            let i = load.iter().chain(degraded_load).position(|l| {
                acc += u64::from(*l);
                h <= acc
            });
            let n = set.priorities.len();
            let i = i.unwrap_or(0);
            (&set.priorities[(i % n).min(n - 1)], i >= n)
        }
    };
    let panic = level.panic;
    let (hosts, lb) = match level.localities.as_ref().and_then(Localities::pick) {
        _ if degraded && !panic => (&level.degraded, &level.degraded_lb),
        Some((hosts, lb)) => (hosts, lb),
        None => (&level.pick, &level.lb),
    };
    if hosts.is_empty() {
        return Pick { host: None, panic };
    }
    let Some(first) = pick_from(policy, hosts, lb, hash) else { return Pick { host: None, panic } };
    if avoid.is_empty() || !avoid.contains(&first.id) {
        return Pick { host: Some(first), panic };
    }
    // Previous-hosts predicate: try the others of the level in a random order.
    let mut candidates: Vec<&Arc<Host>> = level.pick.iter().filter(|h| !avoid.contains(&h.id)).collect();
    if candidates.is_empty() {
        return Pick { host: Some(first), panic };
    }
    let i = fastrand::usize(..candidates.len());
    Pick { host: Some(candidates.swap_remove(i).clone()), panic }
}

fn pick_from(policy: LbPolicy, hosts: &[Arc<Host>], lb: &LbState, hash: Option<u64>) -> Option<Arc<Host>> {
    let pick = |i: usize| hosts.get(i % hosts.len()).cloned();
    match (lb, policy) {
        (LbState::RoundRobin { schedule, next }, _) => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            match schedule {
                Some(s) if !s.is_empty() => pick(s[(n % s.len() as u64) as usize] as usize),
                _ => pick((n % hosts.len() as u64) as usize),
            }
        }
        (LbState::Plain, LbPolicy::LeastRequest { choice_count }) => {
            let mut best: Option<&Arc<Host>> = None;
            for _ in 0..choice_count {
                let h = &hosts[fastrand::usize(..hosts.len())];
                if best.is_none_or(|b| {
                    h.active_requests.load(Ordering::Relaxed) < b.active_requests.load(Ordering::Relaxed)
                }) {
                    best = Some(h);
                }
            }
            best.cloned()
        }
        (LbState::Ring(ring), _) => {
            if ring.is_empty() {
                return None;
            }
            let h = hash.unwrap_or_else(|| fastrand::u64(..));
            let i = ring.partition_point(|e| e.0 < h);
            let (_, host) = ring[if i == ring.len() { 0 } else { i }];
            pick(host as usize)
        }
        (LbState::Maglev(table), _) => {
            if table.is_empty() {
                return None;
            }
            let h = hash.unwrap_or_else(|| fastrand::u64(..));
            pick(table[(h % table.len() as u64) as usize] as usize)
        }
        _ => weighted_random(hosts),
    }
}

fn weighted_random(hosts: &[Arc<Host>]) -> Option<Arc<Host>> {
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut x = fastrand::u64(..total);
    for h in hosts {
        if x < h.weight as u64 {
            return Some(h.clone());
        }
        x -= h.weight as u64;
    }
    hosts.last().cloned()
}

/// Combines hash policy values the way Envoy does (rotate-left-1 then xor).
pub fn combine_hash(acc: Option<u64>, h: u64) -> u64 {
    match acc {
        None => h,
        Some(a) => a.rotate_left(1) ^ h,
    }
}

/// xxHash64 of a key, seed 0 (Envoy's HashUtil::xxHash64).
pub fn hash_key(b: &[u8]) -> u64 {
    xxh64(b, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(policy: LbPolicy, weights: &[u32]) -> HostSet {
        let hosts: Vec<Arc<Host>> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Host::new(format!("10.0.0.{}:80", i + 1).parse().unwrap(), "", *w, 0, None)))
            .collect();
        build_host_set(hosts, &LbConfig { policy, ..Default::default() }, EndpointPolicy::default())
    }

    fn counts(policy: LbPolicy, weights: &[u32], n: usize, hash: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
        let s = set(policy, weights);
        let mut c = vec![0; weights.len()];
        for i in 0..n {
            let h = choose(policy, &s, hash(i), &[]).host.unwrap();
            let idx = s.all.iter().position(|x| x.id == h.id).unwrap();
            c[idx] += 1;
        }
        c
    }

    #[test]
    fn round_robin_weighted_and_unweighted() {
        assert_eq!(counts(LbPolicy::RoundRobin, &[1, 1, 1], 300, |_| None), [100, 100, 100]);
        assert_eq!(counts(LbPolicy::RoundRobin, &[1, 3], 400, |_| None), [100, 300]);
    }

    #[test]
    fn hash_lbs_are_consistent_and_spread() {
        for p in [LbPolicy::RingHash { min_ring: 1024, max_ring: 8 << 20 }, LbPolicy::Maglev { table_size: 65537 }] {
            let s = set(p, &[1, 1, 1, 1]);
            let a = choose(p, &s, Some(12345), &[]).host.unwrap();
            for _ in 0..10 {
                assert_eq!(choose(p, &s, Some(12345), &[]).host.unwrap().id, a.id);
            }
            let c = counts(p, &[1, 1, 1, 1], 4000, |i| Some(hash_key(format!("k{i}").as_bytes())));
            assert!(c.iter().all(|&x| x > 700), "{p:?} {c:?}");
        }
    }

    #[test]
    fn previous_hosts_are_avoided() {
        let s = set(LbPolicy::RoundRobin, &[1, 1]);
        let a = choose(LbPolicy::RoundRobin, &s, None, &[]).host.unwrap();
        for _ in 0..10 {
            assert_ne!(choose(LbPolicy::RoundRobin, &s, None, &[a.id]).host.unwrap().id, a.id);
        }
    }

    fn host(i: usize, priority: u32, ejected: bool) -> Arc<Host> {
        let mut h = Host::new(format!("10.0.{priority}.{}:80", i + 1).parse().unwrap(), "", 1, priority, None);
        let m = crate::upstream::outlier::HostMonitor::default();
        if ejected {
            crate::upstream::outlier::testing::eject(&m);
        }
        h.outlier = Some(Box::new(m));
        Arc::new(h)
    }

    fn units(a: &[usize], t: &[usize]) -> Vec<(u64, u64)> {
        a.iter().zip(t).map(|(a, t)| (*a as u64, *t as u64)).collect()
    }

    #[test]
    fn priority_load_spills_over_like_envoy() {
        // All healthy: P0 takes everything.
        assert_eq!(
            priority_load(&[4, 4], &[4, 4], &units(&[4, 4], &[4, 4]), 50, 140),
            (vec![100, 0], vec![false, false])
        );
        // P0 at 50 % available: health 70, P1 takes the rest.
        assert_eq!(
            priority_load(&[2, 4], &[4, 4], &units(&[2, 4], &[4, 4]), 50, 140),
            (vec![70, 30], vec![false, false])
        );
        // 80 % available is still full health thanks to the 1.4 overprovisioning.
        assert_eq!(priority_load(&[4, 0], &[5, 5], &units(&[4, 0], &[5, 5]), 50, 140).0, vec![100, 0]);
        // Both levels low: normalized total health 28 + 14 = 42 -> loads 66/33 (+1 rounding to
        // P0), and both below 50 % available: total panic, load by host count.
        assert_eq!(
            priority_load(&[1, 1], &[5, 10], &units(&[1, 1], &[5, 10]), 50, 140),
            (vec![34, 66], vec![true, true])
        );
        // Normalized total health 100 (35 + 105): no level is in panic.
        assert_eq!(
            priority_load(&[1, 3], &[4, 4], &units(&[1, 3], &[4, 4]), 50, 140),
            (vec![35, 65], vec![false, false])
        );
        // One level in panic, the other not: load stays health-based.
        assert_eq!(
            priority_load(&[0, 3], &[4, 5], &units(&[0, 3], &[4, 5]), 50, 140),
            (vec![0, 100], vec![true, false])
        );
        // Nothing available and threshold 0: no panic, P0 nominally takes the load.
        assert_eq!(priority_load(&[0], &[3], &units(&[0], &[3]), 0, 140), (vec![100], vec![false]));
        assert_eq!(priority_load(&[0], &[3], &units(&[0], &[3]), 50, 140), (vec![100], vec![true]));
        // EDS policy: overprovisioning factor 100, and health by weight (P0's available host
        // weighs 3 of 4).
        assert_eq!(priority_load(&[2, 4], &[4, 4], &units(&[2, 4], &[4, 4]), 50, 100).0, vec![50, 50]);
        assert_eq!(priority_load(&[1, 4], &[2, 4], &[(3, 4), (4, 4)], 50, 100).0, vec![75, 25]);
    }

    #[test]
    fn ejected_hosts_are_skipped_until_panic() {
        let cfg = LbConfig::default();
        let hosts: Vec<Arc<Host>> = (0..4).map(|i| host(i, 0, i == 0)).collect();
        let s = build_host_set(hosts.clone(), &cfg, EndpointPolicy::default());
        assert!(!s.priorities[0].panic);
        for _ in 0..20 {
            let p = choose(cfg.policy, &s, None, &[]);
            assert!(!p.panic);
            assert_ne!(p.host.unwrap().id, hosts[0].id);
        }
        // 3 of 4 ejected: 25 % available < 50 %: panic, every host is used again.
        let hosts: Vec<Arc<Host>> = (0..4).map(|i| host(i, 0, i != 0)).collect();
        let s = build_host_set(hosts.clone(), &cfg, EndpointPolicy::default());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let p = choose(cfg.policy, &s, None, &[]);
            assert!(p.panic);
            seen.insert(p.host.unwrap().id);
        }
        assert_eq!(seen.len(), 4);
        // With the threshold at 0 there is no panic: only the available host.
        let s = build_host_set(hosts.clone(), &LbConfig { panic_threshold: 0, ..cfg }, EndpointPolicy::default());
        for _ in 0..10 {
            assert_eq!(choose(cfg.policy, &s, None, &[]).host.unwrap().id, hosts[0].id);
        }
        // An empty cluster is in panic unless the threshold is 0.
        assert!(choose(cfg.policy, &build_host_set(Vec::new(), &cfg, EndpointPolicy::default()), None, &[]).panic);
        let p = choose(
            cfg.policy,
            &build_host_set(Vec::new(), &LbConfig { panic_threshold: 0, ..cfg }, EndpointPolicy::default()),
            None,
            &[],
        );
        assert!(!p.panic && p.host.is_none());
    }

    #[test]
    fn failover_to_the_next_priority() {
        let cfg = LbConfig::default();
        let hosts: Vec<Arc<Host>> = vec![host(0, 0, true), host(1, 0, true), host(0, 1, false), host(1, 1, false)];
        let s = build_host_set(hosts, &cfg, EndpointPolicy::default());
        assert_eq!(s.load, vec![0, 100]);
        for _ in 0..20 {
            assert_eq!(choose(cfg.policy, &s, None, &[]).host.unwrap().priority, 1);
        }
    }

    #[test]
    fn locality_weights_split_traffic() {
        let loc = |z: &str| Some(Arc::new(crate::upstream::host::Locality { zone: z.into(), ..Default::default() }));
        let mk = |i: usize, zone: &str, w: u32| {
            let mut h = Host::new(format!("10.0.0.{}:80", i + 1).parse().unwrap(), "", 1, 0, None);
            h.locality = loc(zone);
            h.locality_weight = w;
            Arc::new(h)
        };
        let hosts = vec![mk(0, "a", 1), mk(1, "b", 3), mk(2, "b", 3)];
        let cfg = LbConfig { locality_weighted: true, ..Default::default() };
        let s = build_host_set(hosts.clone(), &cfg, EndpointPolicy::default());
        let mut c = [0usize; 3];
        for _ in 0..400 {
            let h = choose(cfg.policy, &s, None, &[]).host.unwrap();
            c[hosts.iter().position(|x| x.id == h.id).unwrap()] += 1;
        }
        assert_eq!(c, [100, 150, 150]);
        // Ring hash: zero-weight localities take no part.
        let hosts = vec![mk(0, "a", 0), mk(1, "b", 1)];
        let cfg = LbConfig {
            policy: LbPolicy::RingHash { min_ring: 64, max_ring: 1024 },
            locality_weighted: true,
            ..Default::default()
        };
        let s = build_host_set(hosts.clone(), &cfg, EndpointPolicy::default());
        for k in 0..20u64 {
            assert_eq!(choose(cfg.policy, &s, Some(hash_key(&k.to_le_bytes())), &[]).host.unwrap().id, hosts[1].id);
        }
    }
}
