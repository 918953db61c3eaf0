//! Load balancers: ROUND_ROBIN (weighted), LEAST_REQUEST (power of two choices), RANDOM,
//! RING_HASH and MAGLEV. Their state is computed once per membership change and lives in the
//! host set; picking a host is lock-free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use xxhash_rust::xxh64::xxh64;

use super::host::{Host, HostSet, PriorityHosts};
use crate::config::ConfigError;

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
    pub fn build(policy: LbPolicy, hosts: &[Arc<Host>]) -> Self {
        match policy {
            LbPolicy::RoundRobin => {
                let weighted = hosts.windows(2).any(|w| w[0].weight != w[1].weight);
                let schedule = weighted.then(|| weighted_schedule(hosts));
                // Start at a random offset so proxies do not all hit the first host first.
                LbState::RoundRobin { schedule, next: AtomicU64::new(fastrand::u64(..)) }
            }
            LbPolicy::LeastRequest { .. } | LbPolicy::Random => LbState::Plain,
            LbPolicy::RingHash { min_ring, max_ring } => LbState::Ring(build_ring(hosts, min_ring, max_ring)),
            LbPolicy::Maglev { table_size } => LbState::Maglev(build_maglev(hosts, table_size)),
        }
    }
}

/// An interleaved schedule where each host appears proportionally to its weight (smooth
/// weighted round robin), bounded in length.
fn weighted_schedule(hosts: &[Arc<Host>]) -> Vec<u32> {
    let g = hosts.iter().fold(0u64, |g, h| gcd(g, h.weight as u64)).max(1);
    let mut weights: Vec<i64> = hosts.iter().map(|h| (h.weight as u64 / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total > 10_000 {
        let scale = total as f64 / 10_000.0;
        for w in &mut weights {
            *w = ((*w as f64 / scale).round() as i64).max(1);
        }
    }
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..hosts.len() {
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

/// Envoy's ketama-style ring: each host gets `ring_size * weight / total` entries hashed from
/// `"<address>_<i>"` with xxHash64.
fn build_ring(hosts: &[Arc<Host>], min_ring: u64, max_ring: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let min_norm = hosts.iter().map(|h| h.weight as f64 / total as f64).fold(f64::MAX, f64::min);
    let scale = ((min_ring as f64 * min_norm).ceil() / min_norm).min(max_ring as f64);
    let mut ring = Vec::with_capacity(scale as usize + hosts.len());
    let mut current = 0.0;
    let mut target = 0.0;
    for (i, h) in hosts.iter().enumerate() {
        let addr = h.address_string();
        target += scale * (h.weight as f64 / total as f64);
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
fn build_maglev(hosts: &[Arc<Host>], table_size: u64) -> Vec<u32> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let m = table_size.max(1);
    // Envoy's weighting: normalised weights; a host takes a turn in an iteration once its
    // running target (advanced by the largest weight per turn) allows it.
    let total: f64 = hosts.iter().map(|h| h.weight as f64).sum();
    let weights: Vec<f64> = hosts.iter().map(|h| h.weight as f64 / total).collect();
    let max_w = weights.iter().cloned().fold(0.0, f64::max);
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

/// Picks a host from a host set. `hash` is the request's hash key (for hash policies);
/// `avoid` lists hosts to skip when the previous-hosts retry predicate is on.
pub fn choose(policy: LbPolicy, set: &HostSet, hash: Option<u64>, avoid: &[u64]) -> Option<Arc<Host>> {
    let level = pick_priority(set)?;
    let hosts = &level.hosts;
    let pick = |i: usize| hosts.get(i % hosts.len()).cloned();
    let first = match (&level.lb, policy) {
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
        (LbState::Ring(ring), _) if !ring.is_empty() => {
            let h = hash.unwrap_or_else(|| fastrand::u64(..));
            let i = ring.partition_point(|e| e.0 < h);
            let (_, host) = ring[if i == ring.len() { 0 } else { i }];
            pick(host as usize)
        }
        (LbState::Maglev(table), _) if !table.is_empty() => {
            let h = hash.unwrap_or_else(|| fastrand::u64(..));
            pick(table[(h % table.len() as u64) as usize] as usize)
        }
        _ => weighted_random(hosts),
    }?;
    if avoid.is_empty() || !avoid.contains(&first.id) {
        return Some(first);
    }
    // Previous-hosts predicate: try the others in a random order.
    let mut candidates: Vec<&Arc<Host>> = hosts.iter().filter(|h| !avoid.contains(&h.id)).collect();
    if candidates.is_empty() {
        return Some(first);
    }
    let i = fastrand::usize(..candidates.len());
    Some(candidates.swap_remove(i).clone())
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

/// The first priority level with hosts (a simplification of Envoy's priority load with
/// overprovisioning: without health checking, every present host counts as healthy).
fn pick_priority(set: &HostSet) -> Option<&PriorityHosts> {
    set.priorities.iter().find(|p| !p.hosts.is_empty())
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
        HostSet {
            all: hosts.clone(),
            priorities: vec![PriorityHosts { priority: 0, lb: LbState::build(policy, &hosts), hosts }],
        }
    }

    fn counts(policy: LbPolicy, weights: &[u32], n: usize, hash: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
        let s = set(policy, weights);
        let mut c = vec![0; weights.len()];
        for i in 0..n {
            let h = choose(policy, &s, hash(i), &[]).unwrap();
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
            let a = choose(p, &s, Some(12345), &[]).unwrap();
            for _ in 0..10 {
                assert_eq!(choose(p, &s, Some(12345), &[]).unwrap().id, a.id);
            }
            let c = counts(p, &[1, 1, 1, 1], 4000, |i| Some(hash_key(format!("k{i}").as_bytes())));
            assert!(c.iter().all(|&x| x > 700), "{p:?} {c:?}");
        }
    }

    #[test]
    fn previous_hosts_are_avoided() {
        let s = set(LbPolicy::RoundRobin, &[1, 1]);
        let a = choose(LbPolicy::RoundRobin, &s, None, &[]).unwrap();
        for _ in 0..10 {
            assert_ne!(choose(LbPolicy::RoundRobin, &s, None, &[a.id]).unwrap().id, a.id);
        }
    }
}
