//! Envoy's priority load (`LoadBalancerBase::recalculatePerPriorityState`): how traffic splits
//! between priority levels, and within a level between its healthy and its degraded hosts, from
//! their availability scaled by the overprovisioning factor; and which levels are in panic.

/// One level's host counts in health units (hosts, or host weights with
/// `weighted_priority_health`), excluded hosts left out of `total`, and the host counts the
/// panic threshold reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    pub healthy: u64,
    pub degraded: u64,
    pub total: u64,
    pub healthy_hosts: usize,
    pub degraded_hosts: usize,
    pub total_hosts: usize,
}

/// Per level: the healthy load, the degraded load (percentages, summing to 100 over both when
/// any host is available) and the panic flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loads {
    pub healthy: Vec<u32>,
    pub degraded: Vec<u32>,
    pub panic: Vec<bool>,
}

/// Hands out `total` to levels by availability over the normalized total; returns the first
/// level with availability and what is left (rounding).
fn distribute(load: &mut [u32], availability: &[u32], mut total: u32, normalized: u32) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, a) in availability.iter().enumerate() {
        if first.is_none() && *a > 0 {
            first = Some(i);
        }
        load[i] = total.min((a * 100).checked_div(normalized).unwrap_or(0));
        total -= load[i];
    }
    (first, total)
}

pub fn loads(levels: &[Level], threshold: u32, overprovisioning: u32) -> Loads {
    let n = levels.len();
    let mut out = Loads { healthy: vec![0; n], degraded: vec![0; n], panic: vec![false; n] };
    if n == 0 {
        return out;
    }
    let availability = |a: u64, t: u64| (u64::from(overprovisioning) * a).checked_div(t).unwrap_or(0).min(100) as u32;
    let health: Vec<u32> = levels.iter().map(|l| availability(l.healthy, l.total)).collect();
    let degraded: Vec<u32> = levels.iter().map(|l| availability(l.degraded, l.total)).collect();
    let normalized = (health.iter().sum::<u32>() + degraded.iter().sum::<u32>()).min(100);
    if normalized > 0 {
        let (first_healthy, rest) = distribute(&mut out.healthy, &health, 100, normalized);
        let (first_degraded, rest) = distribute(&mut out.degraded, &degraded, rest, normalized);
        if rest > 0 {
            match (first_healthy, first_degraded) {
                (Some(f), _) => out.healthy[f] += rest,
                (None, Some(f)) => out.degraded[f] += rest,
                (None, None) => {}
            }
        }
    }
    if threshold == 0 && normalized == 0 {
        out.healthy[0] = 100;
        return out;
    }
    out.panic = levels
        .iter()
        .map(|l| {
            normalized != 100 && {
                let t = l.total_hosts;
                let pct = if t == 0 { 0.0 } else { 100.0 * (l.healthy_hosts + l.degraded_hosts) as f64 / t as f64 };
                pct < f64::from(threshold.min(100))
            }
        })
        .collect();
    if out.panic.iter().all(|p| *p) {
        // Total panic: load by host count, whatever the health.
        let total: usize = levels.iter().map(|l| l.total_hosts).sum();
        let mut remaining = 100u32;
        for (i, l) in levels.iter().enumerate() {
            out.healthy[i] = (100 * l.total_hosts / total.max(1)) as u32;
            out.degraded[i] = 0;
            remaining -= out.healthy[i];
        }
        if let Some(f) = levels.iter().position(|l| l.total_hosts > 0) {
            out.healthy[f] += remaining;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(healthy: usize, degraded: usize, total: usize) -> Level {
        Level {
            healthy: healthy as u64,
            degraded: degraded as u64,
            total: total as u64,
            healthy_hosts: healthy,
            degraded_hosts: degraded,
            total_hosts: total,
        }
    }

    #[test]
    fn degraded_hosts_take_what_healthy_ones_cannot() {
        // 3 healthy of 4: 105 % -> 100, the degraded host takes nothing.
        let l = loads(&[level(3, 1, 4)], 50, 140);
        assert_eq!((l.healthy, l.degraded, l.panic), (vec![100], vec![0], vec![false]));
        // 2 healthy + 1 degraded of 3: 93 healthy, 46 degraded -> 93 / 7.
        let l = loads(&[level(2, 1, 3)], 50, 140);
        assert_eq!((l.healthy, l.degraded), (vec![93], vec![7]));
        // Only degraded hosts: they take everything, and count against panic.
        let l = loads(&[level(0, 2, 3)], 50, 140);
        assert_eq!((l.healthy, l.degraded, l.panic), (vec![0], vec![100], vec![false]));
        // Envoy's example: 10/20/10 % health, 20/10/0 % degraded -> 16/28/14 and 28/14/0 (+2
        // rounding to the first healthy level).
        let ls = [level(1, 2, 14), level(2, 1, 14), level(1, 0, 14)];
        let l = loads(&ls, 0, 140);
        assert_eq!(l.healthy.iter().sum::<u32>() + l.degraded.iter().sum::<u32>(), 100);
        assert_eq!(l.degraded[2], 0);
        assert!(l.healthy[0] > 0 && l.degraded[0] > l.healthy[0]);
    }
}
