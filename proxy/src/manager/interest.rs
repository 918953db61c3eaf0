//! The xDS interest: which EDS, RDS and SDS names (and which files of file-based xDS) the current

//! clusters and listeners need; the xDS clients subscribe accordingly.

use std::collections::BTreeSet;

use super::State;
use super::listeners::{listener_secrets, rds_sources};

/// What the manager tells the xDS client it wants (names for EDS and RDS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    pub eds: BTreeSet<String>,
    pub rds: BTreeSet<String>,
    pub sds: BTreeSet<String>,
    /// The names in `sds` whose config source is `ads` (subscribed on the ADS stream).
    pub sds_ads: BTreeSet<String>,
    /// Files of file-based xDS the config references (`path_config_source` of SDS, RDS and
    /// EDS), with the resource type each must carry.
    pub files: BTreeSet<(std::path::PathBuf, &'static str)>,
}

/// What the state's clusters and listeners need.
pub(super) fn of(st: &State) -> Interest {
    let mut interest = Interest::default();
    for c in st.clusters.values().map(|d| &d.cluster).chain(st.static_clusters.values()) {
        match (&c.eds_service_name, &c.eds_file) {
            (Some(_), Some(f)) => {
                interest.files.insert((f.clone(), crate::config::type_url::ENDPOINT));
            }
            (Some(s), None) => {
                interest.eds.insert(s.clone());
            }
            _ => {}
        }
        interest.sds.extend(c.secret_names());
        interest.sds_ads.extend(c.ads_secret_names());
        interest.files.extend(c.secret_files().into_iter().map(|f| (f, crate::config::type_url::SECRET)));
    }
    for l in st.static_listeners.iter().chain(st.listeners.values().map(|d| &d.listener)) {
        for (name, file) in rds_sources(l) {
            match file {
                Some(f) => interest.files.insert((f, crate::config::type_url::ROUTE)),
                None => interest.rds.insert(name),
            };
        }
        interest.sds.extend(listener_secrets(l));
        let tls = l.chains.iter().chain(l.default_chain.iter()).filter_map(|c| c.tls.as_ref());
        interest.sds_ads.extend(tls.clone().flat_map(|t| t.ads_secret_names().iter().cloned()));
        let sds_files = tls.flat_map(|t| t.secret_files().iter().cloned());
        interest.files.extend(sds_files.map(|f| (f, crate::config::type_url::SECRET)));
    }
    interest
}
