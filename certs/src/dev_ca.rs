//! A development CA: a self-signed root (or intermediate), SPIFFE workload certificates, and
//! the `remora certs` command-line arguments.
//!
//! Keys are ECDSA P-256 unless asked otherwise. Validity is explicit, so tests can mint
//! certificates that are not yet valid or already expired. Files use Istio's names: a CA
//! directory holds `root-cert.pem` and `root-key.pem`; a workload directory holds
//! `cert-chain.pem`, `key.pem` and `root-cert.pem` (what Istio mounts for file-based certs).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use time::OffsetDateTime;

use crate::SpiffeId;

/// File names in a CA directory.
pub const CA_CERT_FILE: &str = "root-cert.pem";
pub const CA_KEY_FILE: &str = "root-key.pem";
/// File names in a workload directory.
pub const CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOT_FILE: &str = "root-cert.pem";

/// Dev CA errors.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("generating certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevCaError + '_ {
    move |source| DevCaError::Io { path: path.to_path_buf(), source }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one minute ago (tolerates small clock skew) for `d`.
    pub fn for_duration(d: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::minutes(1), not_after: now + d }
    }

    /// From one second ago for `d` (short-lived certificates whose renewal time matters).
    pub fn starting_now(d: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::seconds(1), not_after: now + d }
    }

    /// Valid from two days ago until yesterday: already expired.
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::days(2), not_after: now - time::Duration::days(1) }
    }

    /// Valid from tomorrow for a day: not yet valid.
    pub fn not_yet_valid() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now + time::Duration::days(1), not_after: now + time::Duration::days(2) }
    }
}

/// Key algorithm for a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyType {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

/// A certificate authority that can issue workload certificates.
pub struct DevCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates above this one, root last (empty for a root).
    parents_pem: Vec<String>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("parents", &self.parents_pem.len()).finish()
    }
}

/// What to put in a new CA certificate.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub common_name: String,
    pub organization: String,
    pub validity: Validity,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            common_name: "Remora Dev Root CA".into(),
            organization: "cluster.local".into(),
            validity: Validity::for_duration(Duration::from_secs(10 * 365 * 24 * 3600)),
        }
    }
}

fn ca_params(opts: &CaOptions) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, opts.organization.clone());
    dn.push(DnType::CommonName, opts.common_name.clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = opts.validity.not_before;
    params.not_after = opts.validity.not_after;
    params.serial_number = Some(random_serial());
    params
}

/// What to put in a workload certificate.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub spiffe: Option<SpiffeId>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub common_name: Option<String>,
    pub validity: Validity,
    pub key_type: KeyType,
}

impl WorkloadOptions {
    /// An Istio-style workload certificate for `spiffe`, valid for 24 hours.
    pub fn spiffe(spiffe: SpiffeId) -> Self {
        WorkloadOptions {
            spiffe: Some(spiffe),
            dns_names: Vec::new(),
            ips: Vec::new(),
            common_name: None,
            validity: Validity::for_duration(Duration::from_secs(24 * 3600)),
            key_type: KeyType::EcdsaP256,
        }
    }

    fn params(&self) -> Result<CertificateParams, DevCaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &self.common_name {
            dn.push(DnType::CommonName, cn.clone());
        }
        params.distinguished_name = dn;
        if let Some(id) = &self.spiffe {
            params.subject_alt_names.push(SanType::URI(id.as_str().try_into()?));
        }
        for d in &self.dns_names {
            params.subject_alt_names.push(SanType::DnsName(d.as_str().try_into()?));
        }
        for ip in &self.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if params.subject_alt_names.is_empty() && self.common_name.is_none() {
            return Err(DevCaError::Invalid(
                "a workload certificate needs a SPIFFE ID, a DNS name, an IP or a common name".into(),
            ));
        }
        workload_profile(&mut params, self.validity);
        Ok(params)
    }
}

/// Key usage, EKUs and validity of a workload (leaf) certificate, as Istio issues them.
fn workload_profile(params: &mut CertificateParams, validity: Validity) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial());
}

/// A freshly issued certificate and its key, PEM encoded.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// Leaf followed by intermediates (no root), as a server sends it.
    pub chain_pem: String,
    /// The root certificate (trust bundle).
    pub root_pem: String,
}

impl IssuedCert {
    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<(), DevCaError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_file(&dir.join(CHAIN_FILE), &self.chain_pem, false)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, true)?;
        write_file(&dir.join(ROOT_FILE), &self.root_pem, false)?;
        Ok(())
    }
}

fn write_file(path: &Path, data: &str, private: bool) -> Result<(), DevCaError> {
    std::fs::write(path, data).map_err(io_err(path))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

impl DevCa {
    /// A new self-signed root CA.
    pub fn new_root(opts: &CaOptions) -> Result<Self, DevCaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(opts);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            parents_pem: Vec::new(),
        })
    }

    /// A new intermediate CA signed by this one.
    pub fn new_intermediate(&self, opts: &CaOptions) -> Result<Self, DevCaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(opts);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut parents_pem = vec![self.cert_pem.clone()];
        parents_pem.extend(self.parents_pem.iter().cloned());
        Ok(DevCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key), parents_pem })
    }

    /// A root CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DevCaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(DevCa { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), issuer, parents_pem: Vec::new() })
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, DevCaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        Self::from_pem(&cert, &key)
    }

    /// Writes `root-cert.pem` and `root-key.pem` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<(), DevCaError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, true)?;
        Ok(())
    }

    /// This CA's certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The root at the top of this CA's chain (itself for a root).
    pub fn root_pem(&self) -> &str {
        self.parents_pem.last().unwrap_or(&self.cert_pem)
    }

    /// This CA's certificate and its parents below the root: what to append to a leaf.
    fn intermediates_pem(&self) -> String {
        if self.parents_pem.is_empty() {
            return String::new();
        }
        let mut s = self.cert_pem.clone();
        for p in &self.parents_pem[..self.parents_pem.len() - 1] {
            s.push_str(p);
        }
        s
    }

    /// Issues a workload certificate with a new key.
    pub fn issue(&self, opts: &WorkloadOptions) -> Result<IssuedCert, DevCaError> {
        let key = KeyPair::generate_for(opts.key_type.alg())?;
        self.issue_for_key(opts, &key)
    }

    /// Issues a workload certificate for an existing key (e.g. an RSA key made elsewhere).
    pub fn issue_with_key_pem(&self, opts: &WorkloadOptions, key_pem: &str) -> Result<IssuedCert, DevCaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let mut issued = self.issue_for_key(opts, &key)?;
        issued.key_pem = key_pem.to_string();
        Ok(issued)
    }

    fn issue_for_key(&self, opts: &WorkloadOptions, key: &KeyPair) -> Result<IssuedCert, DevCaError> {
        let cert = opts.params()?.signed_by(key, &self.issuer)?;
        let cert_pem = cert.pem();
        Ok(IssuedCert {
            chain_pem: format!("{cert_pem}{}", self.intermediates_pem()),
            cert_pem,
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem().to_string(),
        })
    }

    /// Signs a PEM CSR as a workload certificate, keeping the CSR's SANs and subject. Returns
    /// the chain leaf first, root last (the Istio CA response form).
    pub fn sign_csr(&self, csr_pem: &str, validity: Validity) -> Result<Vec<String>, DevCaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        workload_profile(&mut csr.params, validity);
        let cert = csr.signed_by(&self.issuer)?;
        let mut chain = vec![cert.pem(), self.cert_pem.clone()];
        chain.extend(self.parents_pem.iter().cloned());
        Ok(chain)
    }
}

// === `remora certs` ===

/// `remora certs <command>`: make development certificates.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a self-signed root CA (root-cert.pem, root-key.pem).
    Root(RootArgs),
    /// Issue a workload certificate (cert-chain.pem, key.pem, root-cert.pem).
    Workload(WorkloadArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RootArgs {
    /// Directory to write root-cert.pem and root-key.pem into.
    #[arg(long)]
    pub out: PathBuf,
    /// Subject common name.
    #[arg(long, default_value = "Remora Dev Root CA")]
    pub common_name: String,
    /// Subject organization (Istio uses the trust domain).
    #[arg(long, default_value = "cluster.local")]
    pub organization: String,
    /// Validity, e.g. 3650d, 24h, 30m.
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    pub validity: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// CA directory holding root-cert.pem and root-key.pem.
    #[arg(long)]
    pub ca: PathBuf,
    /// SPIFFE ID for the URI SAN, e.g. spiffe://cluster.local/ns/default/sa/foo.
    #[arg(long)]
    pub spiffe: Option<String>,
    /// DNS SAN (repeatable).
    #[arg(long = "dns")]
    pub dns_names: Vec<String>,
    /// IP SAN (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// Directory to write cert-chain.pem, key.pem and root-cert.pem into.
    #[arg(long)]
    pub out: PathBuf,
    /// Validity, e.g. 24h, 90d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub validity: Duration,
    /// Issue an already expired certificate (for tests).
    #[arg(long)]
    pub expired: bool,
}

/// Parses `90d`, `24h`, `30m`, `45s` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 90d, 24h, 30m, 45s)"))?;
    if n == 0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// Runs `remora certs`; returns a one-line summary for the terminal.
pub fn run(args: &CertsArgs) -> Result<String, DevCaError> {
    match &args.command {
        CertsCommand::Root(a) => {
            let ca = DevCa::new_root(&CaOptions {
                common_name: a.common_name.clone(),
                organization: a.organization.clone(),
                validity: Validity::for_duration(a.validity),
            })?;
            ca.write(&a.out)?;
            Ok(format!("wrote {} and {}", a.out.join(CA_CERT_FILE).display(), a.out.join(CA_KEY_FILE).display()))
        }
        CertsCommand::Workload(a) => {
            let ca = DevCa::load(&a.ca)?;
            let spiffe = a
                .spiffe
                .as_deref()
                .map(SpiffeId::parse)
                .transpose()
                .map_err(|e| DevCaError::Invalid(format!("--spiffe: {e}")))?;
            let opts = WorkloadOptions {
                spiffe,
                dns_names: a.dns_names.clone(),
                ips: a.ips.clone(),
                common_name: None,
                validity: if a.expired { Validity::expired() } else { Validity::for_duration(a.validity) },
                key_type: KeyType::EcdsaP256,
            };
            let issued = ca.issue(&opts)?;
            issued.write(&a.out)?;
            Ok(format!(
                "wrote {}, {} and {}",
                a.out.join(CHAIN_FILE).display(),
                a.out.join(KEY_FILE).display(),
                a.out.join(ROOT_FILE).display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerIdentity;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn issues_spiffe_workload_certs() {
        let ca = DevCa::new_root(&CaOptions::default()).unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/foo").unwrap();
        let issued = ca.issue(&WorkloadOptions::spiffe(id.clone())).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let peer = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(peer.spiffe.as_ref(), Some(&id));
        assert_eq!(peer.uri_sans, vec![id.to_string()]);
        assert_eq!(issued.root_pem, ca.cert_pem());
        assert_eq!(issued.chain_pem, issued.cert_pem);
    }

    #[test]
    fn intermediate_chain_and_files_round_trip() {
        let root = DevCa::new_root(&CaOptions::default()).unwrap();
        let inter =
            root.new_intermediate(&CaOptions { common_name: "Intermediate".into(), ..CaOptions::default() }).unwrap();
        let issued = inter.issue(&WorkloadOptions::spiffe(SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap())).unwrap();
        assert_eq!(issued.chain_pem, format!("{}{}", issued.cert_pem, inter.cert_pem()));
        assert_eq!(issued.root_pem, root.cert_pem());

        let dir = tempfile::tempdir().unwrap();
        root.write(dir.path()).unwrap();
        let loaded = DevCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), root.cert_pem());
        issued.write(&dir.path().join("w")).unwrap();
        let chain = std::fs::read_to_string(dir.path().join("w").join(CHAIN_FILE)).unwrap();
        assert_eq!(chain, issued.chain_pem);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("0h").is_err());
    }

    #[test]
    fn cli_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let w_dir = dir.path().join("w");
        run(&CertsArgs {
            command: CertsCommand::Root(RootArgs {
                out: ca_dir.clone(),
                common_name: "Test".into(),
                organization: "td".into(),
                validity: Duration::from_secs(86400),
            }),
        })
        .unwrap();
        let summary = run(&CertsArgs {
            command: CertsCommand::Workload(WorkloadArgs {
                ca: ca_dir.clone(),
                spiffe: Some("spiffe://cluster.local/ns/default/sa/foo".into()),
                dns_names: vec!["foo.default.svc".into()],
                ips: vec![],
                out: w_dir.clone(),
                validity: Duration::from_secs(3600),
                expired: false,
            }),
        })
        .unwrap();
        assert!(summary.contains("cert-chain.pem"));
        for f in [CHAIN_FILE, KEY_FILE, ROOT_FILE] {
            assert!(w_dir.join(f).exists(), "{f}");
        }
        let bad = run(&CertsArgs {
            command: CertsCommand::Workload(WorkloadArgs {
                ca: ca_dir,
                spiffe: Some("http://nope".into()),
                dns_names: vec![],
                ips: vec![],
                out: w_dir,
                validity: Duration::from_secs(3600),
                expired: false,
            }),
        })
        .unwrap_err()
        .to_string();
        assert!(bad.starts_with("--spiffe:"), "{bad}");
    }
}
