//! LDS: listeners added, updated (the old one drains while the new one takes connections) or
//! removed; a listener warms until its RDS tables and secrets arrive; sockets are bound and
//! handed to the workers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;

use super::*;

impl ConfigManager {
    // === listeners (LDS) ===

    pub fn apply_listeners(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<ListenerProto>,
        removed: &[String],
        full_state: bool,
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut to_start = Vec::new();
        let mut to_shut = Vec::new();
        {
            let st = self.state();
            let names: HashSet<String> = st.clusters.keys().chain(st.static_clusters.keys()).cloned().collect();
            drop(st);
            let cx = BuildCtx { cluster_names: Arc::new(names), ..self.cx.clone() };
            let mut st = self.state();
            for p in resources {
                let name = p.name.clone();
                if !seen.insert(name.clone()) {
                    errors.push(ResourceError::new(&name, format!("duplicate listener {name} found")));
                    continue;
                }
                if let Some(existing) = st.listeners.get(&name)
                    && existing.listener.proto == p
                {
                    continue;
                }
                if st.static_listeners.iter().any(|l| l.name == name) {
                    errors
                        .push(ResourceError::new(&name, format!("listener '{name}' is static and cannot be updated")));
                    continue;
                }
                if let Err(e) = self.admit(&p) {
                    errors.push(ResourceError::new(&name, e));
                    continue;
                }
                let l = match Listener::from_proto(&p, &cx) {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        errors.push(ResourceError::new(&name, e));
                        continue;
                    }
                };
                // An address already used by another listener is an error (unless it is the
                // listener being replaced).
                let clash = l.bind_to_port
                    && st
                        .listeners
                        .values()
                        .any(|d| d.listener.name != name && d.listener.bind_to_port && d.listener.address == l.address);
                if clash {
                    errors.push(ResourceError::new(
                        &name,
                        format!("error adding listener '{}': listener with the same address already exists", l.address),
                    ));
                    continue;
                }
                let warming = !self.listener_ready(&st, &l);
                let mut previous = None;
                if let Some(old) = st.listeners.get(&name) {
                    self.listener_modified.inc();
                    // The serving version keeps serving until its replacement is ready.
                    let serving = if old.warming { old.previous.clone() } else { Some(old.listener.clone()) };
                    if old.warming {
                        // A warming version that never served is simply dropped.
                        old.listener.shut();
                    }
                    if warming { previous = serving } else { to_shut.extend(serving) }
                } else {
                    self.listener_added.inc();
                    st.listener_order.push(name.clone());
                }
                to_start.push(l.clone());
                st.listeners.insert(name, DynListener { version: version.to_string(), listener: l, warming, previous });
            }
            let mut gone: Vec<String> = removed.to_vec();
            if full_state {
                gone.extend(st.listeners.keys().filter(|k| !seen.contains(*k)).cloned());
            }
            for n in gone {
                st.sockets.remove(&n);
                if let Some(old) = st.listeners.remove(&n) {
                    self.listener_removed.inc();
                    to_shut.push(old.listener);
                    to_shut.extend(old.previous);
                    st.listener_order.retain(|x| *x != n);
                }
            }
            st.lds_version = version.to_string();
        }
        for l in &to_start {
            self.attach_routes(l);
        }
        // New listeners (warming ones included: they accept, and their HCM answers 404 until
        // routes arrive; Envoy holds them back, which `routes_ready` models for activation).
        for l in &to_start {
            let warming = self.state().listeners.get(&l.name).is_some_and(|d| d.warming);
            if !warming && let Err(e) = self.start_listener(l) {
                errors.push(ResourceError::new(&l.name, e));
                self.state().listeners.remove(&l.name);
            }
        }
        for l in to_shut {
            l.shut();
        }
        self.publish();
        self.lds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// True when every RDS route config the listener's HCMs name has arrived.
    pub(super) fn listener_ready(&self, st: &State, l: &Listener) -> bool {
        rds_names(l).iter().all(|n| st.routes.contains_key(n))
            && listener_secrets(l).iter().all(|n| self.cx.secrets.contains(n))
    }

    /// Activates warming clusters and listeners whose dependencies (endpoints, routes, secrets)
    /// have all arrived. Returns true when something changed.
    pub(super) fn promote(&self, errors: &mut Vec<ResourceError>) -> bool {
        let mut activated = Vec::new();
        let mut changed = false;
        {
            let mut st = self.state();
            let ready_clusters: Vec<String> = st
                .clusters
                .iter()
                .filter(|(_, d)| d.warming && self.cluster_ready(&st, &d.cluster))
                .map(|(n, _)| n.clone())
                .collect();
            for n in ready_clusters {
                if let Some(d) = st.clusters.get_mut(&n) {
                    d.warming = false;
                    changed = true;
                }
            }
            let ready: Vec<String> = st
                .listeners
                .iter()
                .filter(|(_, d)| d.warming && self.listener_ready(&st, &d.listener))
                .map(|(n, _)| n.clone())
                .collect();
            for n in ready {
                if let Some(d) = st.listeners.get_mut(&n) {
                    d.warming = false;
                    activated.push((d.listener.clone(), d.previous.take()));
                }
            }
        }
        for (l, previous) in activated {
            changed = true;
            if let Err(e) = self.start_listener(&l) {
                errors.push(ResourceError::new(&l.name, e));
            }
            // The version it replaces stops accepting and drains now.
            if let Some(p) = previous {
                p.shut();
            }
        }
        changed
    }

    /// Points the listener's RDS HCMs at the route tables we already have.
    pub(super) fn attach_routes(&self, l: &Listener) {
        let st = self.state();
        for (name, slot) in rds_slots(l) {
            if let Some(r) = st.routes.get(&name) {
                slot.store(Some(r.table.clone()));
            }
        }
    }

    /// Closes the kept listen sockets of these listeners once they stop accepting for good
    /// (`/drain_listeners`, shutdown): a connection then is refused, not queued with no one to
    /// accept it.
    pub fn release_listen_sockets(&self, names: &[String]) {
        let mut st = self.state();
        for n in names {
            st.sockets.remove(n);
        }
    }

    pub(super) fn start_listener(&self, l: &Arc<Listener>) -> Result<(), String> {
        if !l.bind_to_port {
            return Ok(());
        }
        let addresses: Vec<SocketAddr> = l.addresses().collect();
        let mut st = self.state();
        // A new version at the same addresses takes over the sockets of the one it replaces.
        let reused = match st.sockets.get(&l.name).filter(|b| b.addresses == addresses) {
            Some(b) => b
                .sockets
                .iter()
                .map(|per| per.iter().map(|s| s.try_clone()).collect::<std::io::Result<Vec<_>>>())
                .collect::<std::io::Result<Vec<_>>>()
                .ok(),
            None => None,
        };
        let all = match reused {
            Some(all) => all,
            None => {
                let mut all = Vec::new();
                let mut kept = Vec::new();
                for (i, addr) in addresses.iter().enumerate() {
                    // An additional [::] beside 0.0.0.0 takes IPv6 only (Envoy's default, no ipv4_compat).
                    let bound = crate::listener::socket::bind_reuseport_with(*addr, self.workers.len(), 1024, i > 0);
                    let sockets = match bound {
                        Ok(s) => s,
                        Err(e) => {
                            // The sockets of a version at other addresses are no one's now.
                            st.sockets.remove(&l.name);
                            return Err(format!("cannot bind '{addr}': {e}"));
                        }
                    };
                    let copies = sockets
                        .iter()
                        .map(|s| s.try_clone())
                        .collect::<std::io::Result<Vec<_>>>()
                        .map_err(|e| format!("listener '{}': {e}", l.name))?;
                    kept.push(copies);
                    all.push(sockets);
                }
                st.sockets.insert(l.name.clone(), ListenSockets { addresses, sockets: kept });
                all
            }
        };
        drop(st);
        for sockets in all {
            for (w, s) in self.workers.iter().zip(sockets) {
                let _ = w.send(Command::Listen { listener: l.clone(), socket: s });
            }
        }
        Ok(())
    }
}

/// The RDS sources of a listener's HTTP chains: the route configuration name, the slot its
/// table goes into, and its file for file-based RDS.
fn rds(l: &Listener) -> impl Iterator<Item = (&String, &Arc<ArcSwapOption<RouteTable>>, &Option<std::path::PathBuf>)> {
    l.chains.iter().chain(l.default_chain.iter()).filter_map(|c| match &c.terminal {
        Terminal::Http(h) => match &h.routes {
            RouteSource::Rds { name, table, file } => Some((name, table, file)),
            RouteSource::Static(_) => None,
        },
        Terminal::Tcp(_) => None,
    })
}

/// The stat prefix of the listener's first HTTP connection manager that takes `name` over RDS.
pub(super) fn rds_stat_prefix(l: &Listener, name: &str) -> Option<String> {
    l.chains.iter().chain(l.default_chain.iter()).find_map(|c| match &c.terminal {
        Terminal::Http(h) => match &h.routes {
            RouteSource::Rds { name: n, .. } if n == name => Some(h.stat_prefix.clone()),
            _ => None,
        },
        Terminal::Tcp(_) => None,
    })
}

pub(super) fn rds_slots(l: &Listener) -> Vec<(String, Arc<ArcSwapOption<RouteTable>>)> {
    rds(l).map(|(n, t, _)| (n.clone(), t.clone())).collect()
}

/// SDS secret names the listener's TLS filter chains need.
pub(super) fn listener_secrets(l: &Listener) -> Vec<String> {
    let mut v: Vec<String> = l
        .chains
        .iter()
        .chain(l.default_chain.iter())
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| t.secret_names())
        .collect();
    v.sort();
    v.dedup();
    v
}

pub(super) fn rds_names(l: &Listener) -> Vec<String> {
    rds(l).map(|(n, _, _)| n.clone()).collect()
}

/// Each RDS route configuration a listener needs, with its file for file-based RDS.
pub(super) fn rds_sources(l: &Listener) -> Vec<(String, Option<std::path::PathBuf>)> {
    rds(l).map(|(n, _, f)| (n.clone(), f.clone())).collect()
}
