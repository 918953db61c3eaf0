//! Route explain (`GET /explain`, `remora explain`): which listener, filter chain, virtual host,
//! route, cluster and endpoints a request would take on the live config, and for every earlier
//! candidate why it did not match. It runs the same selection code the data path runs
//! (`Listener::chain_for`, `RouteTable::find_virtual_host`, `RouteMatcher::check`), so the
//! answer cannot drift from what traffic does.
//!
//! Query parameters: `listener` (name) or `port`; `dst` (the original destination, for a
//! `use_original_dst` listener such as Istio's virtualOutbound); `src` (the client address,
//! default 127.0.0.1:40000); `sni`, `alpn` (comma-separated), `transport` (`tls` when `sni` or
//! `alpn` is given, else `raw_buffer`); `protocol` (`http/1.1` default, or `h2c`: what the HTTP
//! inspector would report); `host`, `path` (may carry a query), `method`, `scheme`, `header`
//! (repeatable `name:value`); `random` (0..999999, the draw `runtime_fraction` is compared with).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::filters::network::Terminal;
use crate::filters::network::http_connection_manager::RouteSource;
use crate::listener::Listener;
use crate::listener::filter_chain::{ConnFacts, Dropped};
use crate::router::action::ClusterSpecifier;
use crate::router::route::{Action, MatchInput};
use crate::upstream::cluster::Cluster;

/// The explanation, as text lines; Err for a bad query (400).
pub fn explain(
    params: &[(String, String)],
    listeners: &[Arc<Listener>],
    clusters: &ClusterLookup<'_>,
) -> Result<String, String> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let addr = |k: &str| -> Result<Option<SocketAddr>, String> {
        get(k).map(|v| v.parse::<SocketAddr>().map_err(|e| format!("{k}={v}: {e} (want ip:port)"))).transpose()
    };
    let mut out = String::new();
    let named = match (get("listener"), get("port")) {
        (Some(n), _) => listeners.iter().find(|l| l.name == n).ok_or_else(|| format!("no listener named '{n}'"))?,
        (None, Some(p)) => {
            let p: u16 = p.parse().map_err(|_| format!("port={p}: not a port"))?;
            listeners
                .iter()
                .find(|l| l.addresses().any(|a| a.port() == p))
                .ok_or_else(|| format!("no listener on port {p}"))?
        }
        (None, None) => return Err("give listener=NAME or port=N".into()),
    };
    let src = addr("src")?.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 40000)));
    let dst = addr("dst")?.unwrap_or(named.address);
    let _ = writeln!(out, "listener {} ({}), client {src}, destination {dst}", named.name, named.address);
    let mut listener = named.clone();
    if named.use_original_dst && dst != named.address {
        match crate::listener::handoff_target(listeners, named, dst) {
            Some(t) => {
                let _ = writeln!(out, "  use_original_dst: handed to listener {} ({})", t.name, t.address);
                listener = t;
                let _ = writeln!(out, "listener {} ({})", listener.name, listener.address);
            }
            None => {
                let _ = writeln!(out, "  use_original_dst: no listener owns {dst}; this listener's chains decide");
            }
        }
    }

    // What the listener filters would have found.
    let sni = get("sni").filter(|s| !s.is_empty());
    let mut alpn: Vec<String> =
        get("alpn").map(|a| a.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default();
    let transport = get("transport").unwrap_or(if sni.is_some() || !alpn.is_empty() { "tls" } else { "raw_buffer" });
    if transport == "raw_buffer"
        && alpn.is_empty()
        && listener.listener_filters.runs(crate::filters::listener::Which::HttpInspector, dst.port())
    {
        let proto = get("protocol").unwrap_or("http/1.1");
        let _ = writeln!(out, "  http_inspector: {proto}");
        alpn.push(proto.to_string());
    }
    let facts = ConnFacts {
        local: Some(dst),
        remote: Some(src),
        direct_remote: Some(src),
        server_name: sni,
        transport_protocol: transport,
        application_protocols: &alpn,
    };
    let mut dropped: Vec<Dropped> = Vec::new();
    let chain = listener.chain_for(&facts, Some(&mut dropped));
    dropped.sort_by_key(|d| d.chain);
    for d in &dropped {
        let name = listener.chains.get(d.chain).map(|c| c.name.as_str()).unwrap_or("");
        let why = if d.outmatched {
            format!("another chain matches {} more specifically", d.criterion)
        } else {
            format!("{} does not match", d.criterion)
        };
        let _ = writeln!(out, "  filter chain {} \"{name}\": no: {why}", d.chain);
    }
    let Some(chain) = chain else {
        let _ = writeln!(out, "  no filter chain matches and there is no default chain: the connection is closed");
        return Ok(out);
    };
    let is_default = listener.default_chain.as_ref().is_some_and(|c| std::ptr::eq(c, chain));
    let _ = writeln!(
        out,
        "  filter chain \"{}\"{}: chosen ({})",
        chain.name,
        if is_default { " (default_filter_chain)" } else { "" },
        if chain.tls.is_some() { "TLS" } else { "plaintext" }
    );
    for f in &chain.filters {
        let _ = writeln!(out, "  network filter {} (may close the connection)", f.name());
    }
    let hcm = match &chain.terminal {
        Terminal::Tcp(_) => {
            let _ = writeln!(out, "  tcp_proxy: the connection is proxied as TCP (see the filter's cluster)");
            return Ok(out);
        }
        Terminal::Http(h) => h,
    };
    let table = match &hcm.routes {
        RouteSource::Static(t) => {
            let _ = writeln!(out, "  http_connection_manager {}: inline route_config", hcm.stat_prefix);
            Some(t.clone())
        }
        RouteSource::Rds { name, table, .. } => {
            let _ = writeln!(out, "  http_connection_manager {}: RDS route table \"{name}\"", hcm.stat_prefix);
            table.load_full()
        }
    };
    let Some(table) = table else {
        let _ = writeln!(out, "  the route table has not arrived: the request would get 404 (NR)");
        return Ok(out);
    };

    // The request.
    let host = get("host").unwrap_or("");
    let full_path = get("path").unwrap_or("/");
    let (path, query) = match full_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (full_path, None),
    };
    let method = get("method").unwrap_or("GET");
    let scheme = get("scheme").unwrap_or(if chain.tls.is_some() { "https" } else { "http" });
    let mut headers = http::HeaderMap::new();
    for (_, hv) in params.iter().filter(|(k, _)| k == "header") {
        let (n, v) = hv.split_once(':').ok_or_else(|| format!("header={hv}: want name:value"))?;
        let n = http::HeaderName::from_bytes(n.trim().as_bytes()).map_err(|e| format!("header={hv}: {e}"))?;
        let v = http::HeaderValue::from_str(v.trim()).map_err(|e| format!("header={hv}: {e}"))?;
        headers.append(n, v);
    }
    let random: u64 =
        get("random").map(|r| r.parse().map_err(|_| format!("random={r}: not a number"))).transpose()?.unwrap_or(0);
    let Some((vi, domain)) = table.find_virtual_host(host) else {
        let _ = writeln!(out, "  no virtual host matches host \"{host}\": 404 (NR)");
        return Ok(out);
    };
    let vh = &table.virtual_hosts()[vi];
    let _ = writeln!(out, "  virtual host \"{}\": chosen by domain \"{domain}\" for host \"{host}\"", vh.name);
    let input = MatchInput {
        headers: crate::matcher::RequestHeaders { method, path: full_path, authority: host, scheme, headers: &headers },
        path,
        query,
        random,
        is_connect: method.eq_ignore_ascii_case("CONNECT"),
    };
    let (missed, hit) = vh.explain_route(&input);
    for (i, r, why) in &missed {
        let _ = writeln!(out, "  route {i} \"{}\": no: {why}", r.name);
    }
    let Some(ri) = hit else {
        let _ = writeln!(out, "  no route matches: 404 (NR)");
        return Ok(out);
    };
    let route = &vh.routes[ri];
    let _ = writeln!(out, "  route {ri} \"{}\": chosen", route.name);
    let ra = match &route.action {
        Action::Direct(d) => {
            let _ = writeln!(out, "  direct_response: {}", d.status.as_u16());
            return Ok(out);
        }
        Action::Redirect(_) => {
            let _ = writeln!(out, "  redirect");
            return Ok(out);
        }
        Action::NonForwarding => {
            let _ = writeln!(out, "  non_forwarding_action: the filters answer; nothing is forwarded");
            return Ok(out);
        }
        Action::Route(ra) => ra,
    };
    let targets: Vec<(String, Option<String>)> = match &ra.cluster {
        ClusterSpecifier::Name(n) => vec![(n.to_string(), None)],
        ClusterSpecifier::Header(h) => match headers.get(h).and_then(|v| v.to_str().ok()) {
            Some(v) => vec![(v.to_string(), Some(format!("from header {h}")))],
            None => {
                let _ = writeln!(out, "  cluster_header {h} is missing: 404 (NR)");
                return Ok(out);
            }
        },
        ClusterSpecifier::Weighted { clusters, total } => clusters
            .iter()
            .map(|w| {
                let pct = if *total == 0 { 0.0 } else { f64::from(w.weight) * 100.0 / *total as f64 };
                (w.name.to_string(), Some(format!("weight {} of {total}, {pct:.1}% of requests", w.weight)))
            })
            .collect(),
    };
    if let Some(t) = ra.timeout {
        let _ = writeln!(out, "  timeout {}ms", t.as_millis());
    }
    if let Some(r) = &ra.retry_policy {
        let _ = writeln!(out, "  retries: up to {}", r.num_retries);
    }
    for (name, note) in targets {
        let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
        match (clusters.find)(&name) {
            None => {
                let _ = writeln!(out, "  cluster {name}{note}: not found: 503 (NC)");
            }
            Some(c) => describe_cluster(&mut out, &c, &note),
        }
    }
    Ok(out)
}

/// How to find a published cluster by name.
pub struct ClusterLookup<'a> {
    pub find: &'a dyn Fn(&str) -> Option<Arc<Cluster>>,
}

fn describe_cluster(out: &mut String, c: &Cluster, note: &str) {
    let hosts = c.hosts.load();
    let _ = writeln!(out, "  cluster {}{note}: {:?}, lb {:?}, {} hosts", c.name, c.discovery, c.lb, hosts.all.len());
    if hosts.all.is_empty() {
        let _ = writeln!(out, "    no hosts: 503 (UH)");
    }
    for h in hosts.all.iter() {
        let state = if h.ejected() { "ejected by outlier detection: skipped" } else { "eligible" };
        let _ = writeln!(out, "    endpoint {} (priority {}, weight {}): {state}", h.address, h.priority, h.weight);
    }
}
