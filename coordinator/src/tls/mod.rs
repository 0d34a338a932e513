// SPDX-License-Identifier: GPL-2.0-or-later
//! Mutually authenticated TLS between the coordinator and `mekha agent`s.
//!
//! Both ends hold a certificate signed by the cluster's CA and accept only
//! a peer whose certificate chains to it and is not on the CA's
//! revocation list: an agent takes commands only from a client
//! certificate (extended key usage clientAuth), the coordinator talks only
//! to an agent certificate (serverAuth) issued for the name or address it
//! dialled. A client certificate carries a [`Role`] (its subject's
//! organizational unit `mekha-ROLE`), which bounds what agents do for it
//! (see `agent::policy`).
//!
//! Three kinds of directory, each holding PEM files:
//!
//! ```text
//! CA directory (--ca-dir, /etc/mekha/ca): only where certificates are issued
//!   ca.pem, ca-key.pem (0600)     the CA; its key never leaves this directory
//!   crl.pem                       the revocation list it signed
//! coordinator's TLS directory (--tls-dir, tls_dir, /etc/mekha/tls)
//!   ca.pem, crl.pem               the CA's certificate and revocation list
//!   client.pem, client-key.pem    the coordinator's certificate and key
//! an agent's TLS directory (`mekha tls init` writes it as TLS_DIR/HOST/)
//!   ca.pem, crl.pem
//!   agent.pem, agent-key.pem      the agent's certificate and key
//! ```
//!
//! `mekha tls init|client|renew|revoke` run the CA (see [`ca`]).
//! Certificates last 90 days unless `--days` says otherwise (the CA ten
//! years); both ends warn when theirs has less than a third of its
//! lifetime left and refuse to start with one that has expired. An agent
//! rereads its directory when a file in it changes, so a renewed
//! certificate or a new CRL copied there takes effect at the next
//! connection. Certificates from an existing PKI work as well; a crl.pem
//! must then be that CA's.

pub mod ca;
pub mod cert;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

pub use cert::{Identity, Lifetime, Role};

pub const CA: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CRL: &str = "crl.pem";
pub const CLIENT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
pub const AGENT: &str = "agent.pem";
pub const AGENT_KEY: &str = "agent-key.pem";

/// Leaf certificates' lifetime unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 90;

/// Where the TLS files are unless a command says otherwise.
pub fn default_dir() -> PathBuf {
    std::env::var_os("MEKHA_TLS_DIR").map_or_else(|| PathBuf::from("/etc/mekha/tls"), PathBuf::from)
}

/// Where the CA is unless a command says otherwise.
pub fn default_ca_dir() -> PathBuf {
    std::env::var_os("MEKHA_CA_DIR").map_or_else(|| PathBuf::from("/etc/mekha/ca"), PathBuf::from)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("reading private key {}: {e}", path.display()))
}

fn roots(dir: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(&dir.join(CA))? {
        roots.add(cert).map_err(|e| format!("{}: {e}", dir.join(CA).display()))?;
    }
    Ok(Arc::new(roots))
}

/// The CA's revocation list in `dir`, if there is one (a directory from
/// before revocation lists, or another PKI's, may have none).
fn crls(dir: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let path = dir.join(CRL);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(&path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(crls)
}

/// This end's own certificate at `path`, checked for its lifetime: an
/// expired one is an error (the peer would refuse it anyway, with a less
/// clear message), one about to expire a warning on stderr.
pub fn own_certificate(path: &Path) -> Result<Identity, String> {
    let id = Identity::from_pem_file(path)?;
    match id.lifetime(cert::now()) {
        Lifetime::Expired => Err(format!(
            "certificate {} ({id}) expired on {}: renew it (`mekha tls renew --ca-dir CA_DIR {}`)",
            path.display(),
            id.expiry(),
            path.parent().unwrap_or(Path::new(".")).display()
        )),
        Lifetime::ExpiresSoon => {
            warn_once(expiry_warning(path, &id));
            Ok(id)
        }
        Lifetime::Valid => Ok(id),
    }
}

/// A warning on stderr, once per process (a coordinator reads its TLS
/// directory for every agent request).
fn warn_once(message: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&message) {
        eprintln!("mekha: warning: {message}");
        said.push(message);
    }
}

/// What to say of a certificate about to expire.
pub fn expiry_warning(path: &Path, id: &Identity) -> String {
    format!(
        "certificate {} ({id}) expires on {}: renew it (`mekha tls renew --ca-dir CA_DIR {}`)",
        path.display(),
        id.expiry(),
        path.parent().unwrap_or(Path::new(".")).display()
    )
}

/// The files an agent's TLS setup is read from.
pub fn server_files(dir: &Path) -> [PathBuf; 4] {
    [dir.join(CA), dir.join(CRL), dir.join(AGENT), dir.join(AGENT_KEY)]
}

/// The agent's side: its certificate, and clients must present one the CA
/// signed and did not revoke.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, String> {
    own_certificate(&dir.join(AGENT))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
        .with_crls(crls(dir)?)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("TLS directory {}: {e}", dir.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&dir.join(AGENT))?, key(&dir.join(AGENT_KEY))?)
        .map_err(|e| format!("{}: {e}", dir.join(AGENT).display()))?;
    Ok(Arc::new(config))
}

/// The coordinator's side: its client certificate, and agents must
/// present one the CA signed, did not revoke, for the name dialled.
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, String> {
    if dir.join(CA_KEY).exists() {
        warn_once(format!(
            "{} holds the CA's key ({CA_KEY}): whoever reads this directory can mint certificates; \
             move the CA to a directory of its own (see `mekha tls init --help`)",
            dir.display()
        ));
    }
    own_certificate(&dir.join(CLIENT))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(dir)?, provider())
        .with_crls(crls(dir)?)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("TLS directory {}: {e}", dir.display()))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs(&dir.join(CLIENT))?, key(&dir.join(CLIENT_KEY))?)
        .map_err(|e| format!("{}: {e}", dir.join(CLIENT).display()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_keeps_the_ca_key_out_of_every_bundle_and_extends_with_the_same_ca() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        ca::init(&ca_dir, &dir, &["node1".into()], DEFAULT_DAYS).unwrap();
        client_config(&dir).unwrap();
        server_config(&dir.join("node1")).unwrap();
        assert!(ca_dir.join(CA_KEY).exists() && ca_dir.join(CRL).exists());
        for bundle in [dir.clone(), dir.join("node1")] {
            assert!(!bundle.join(CA_KEY).exists(), "the CA key is in {}", bundle.display());
            assert_eq!(fs::read(bundle.join(CA)).unwrap(), fs::read(ca_dir.join(CA)).unwrap());
            assert_eq!(mode(&bundle), 0o700, "{} is its owner's only", bundle.display());
        }
        for key in [ca_dir.join(CA_KEY), dir.join(CLIENT_KEY), dir.join("node1").join(AGENT_KEY)] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        assert_eq!(mode(&ca_dir), 0o700);

        let client = Identity::from_pem_file(&dir.join(CLIENT)).unwrap();
        assert_eq!(client.role, Some(Role::Admin));
        let days = (client.not_after - cert::now()) / 86_400;
        assert!((89..=90).contains(&days), "a client certificate for {days} days");
        let ca = Identity::from_pem_file(&ca_dir.join(CA)).unwrap();
        assert!(ca.not_after - cert::now() > 9 * 365 * 86_400, "the CA outlives its leaves");

        let written = ca::init(&ca_dir, &dir, &["10.0.0.7".into()], 30).unwrap();
        assert_eq!(written.len(), 4, "only the new agent's files: {written:?}");
        let agent = Identity::from_pem_file(&dir.join("10.0.0.7").join(AGENT)).unwrap();
        assert_eq!(agent.hosts, ["10.0.0.7"]);
        assert!((agent.not_after - cert::now()) / 86_400 <= 30);
        server_config(&dir.join("10.0.0.7")).unwrap();

        assert!(ca::init(&ca_dir, &dir, &["../x".into()], DEFAULT_DAYS).is_err());
        assert!(ca::init(&ca_dir, &ca_dir, &[], DEFAULT_DAYS).unwrap_err().contains("apart"));
        assert!(client_config(&dir.join("nowhere")).unwrap_err().contains("client.pem"));
    }

    #[test]
    fn a_tls_directory_with_the_ca_key_in_it_is_refused_with_the_way_out() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        ca::init(&ca_dir, &dir, &[], DEFAULT_DAYS).unwrap();
        // The layout of earlier versions: the CA key beside the client's.
        fs::copy(ca_dir.join(CA_KEY), dir.join(CA_KEY)).unwrap();
        let e = ca::init(&root.path().join("ca2"), &dir, &["n1".into()], DEFAULT_DAYS).unwrap_err();
        assert!(e.contains("holds the CA's key") && e.contains("--ca-dir"), "{e}");
        assert!(!root.path().join("ca2").exists(), "no second CA was made");
        let e = ca::client(&ca_dir, &dir, "x", Role::Monitor, 1).unwrap_err();
        assert!(e.contains("holds the CA's key"), "{e}");
        // A coordinator still runs with it (it warns).
        client_config(&dir).unwrap();
    }

    #[test]
    fn renew_keeps_the_identity_with_a_new_key_and_serial() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        ca::init(&ca_dir, &dir, &["n1".into()], DEFAULT_DAYS).unwrap();
        let watcher = root.path().join("watcher");
        let (_, serial) = ca::client(&ca_dir, &watcher, "nightly report", Role::Monitor, 10).unwrap();
        let before = Identity::from_pem_file(&watcher.join(CLIENT)).unwrap();
        assert_eq!(before.serial, serial);
        let old_key = fs::read(watcher.join(CLIENT_KEY)).unwrap();
        ca::renew(&ca_dir, &watcher, 20).unwrap();
        let after = Identity::from_pem_file(&watcher.join(CLIENT)).unwrap();
        assert_eq!((after.name.as_str(), after.role), ("nightly report", Some(Role::Monitor)));
        assert_ne!(after.serial, before.serial);
        assert_ne!(fs::read(watcher.join(CLIENT_KEY)).unwrap(), old_key);
        assert!(after.not_after > before.not_after);
        client_config(&watcher).unwrap();

        let agent = dir.join("n1");
        let before = Identity::from_pem_file(&agent.join(AGENT)).unwrap();
        ca::renew(&ca_dir, &agent, 5).unwrap();
        let after = Identity::from_pem_file(&agent.join(AGENT)).unwrap();
        assert_eq!(after.hosts, before.hosts);
        assert_ne!(after.serial, before.serial);
        server_config(&agent).unwrap();
        assert!(ca::renew(&ca_dir, &root.path().join("ca"), 5).is_err(), "nothing to renew there");
    }

    #[test]
    fn revoke_by_file_or_serial_lists_both_in_every_bundle() {
        use x509_parser::prelude::FromDer;
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        ca::init(&ca_dir, &dir, &["n1".into()], DEFAULT_DAYS).unwrap();
        let (_, a) = ca::client(&ca_dir, &root.path().join("a"), "a", Role::Operator, 5).unwrap();
        let (_, b) = ca::client(&ca_dir, &root.path().join("b"), "b", Role::Operator, 5).unwrap();
        let a_file = root.path().join("a").join(CLIENT).display().to_string();
        let (added, written) = ca::revoke(&ca_dir, &[a_file.clone(), b.clone()], Some(&dir)).unwrap();
        assert_eq!(added, [a.clone(), b.clone()]);
        assert!(written.contains(&dir.join(CRL)) && written.contains(&dir.join("n1").join(CRL)), "{written:?}");
        let (again, _) = ca::revoke(&ca_dir, &[a_file], None).unwrap();
        assert!(again.is_empty(), "revoked once");
        for crl in [ca_dir.join(CRL), dir.join("n1").join(CRL)] {
            let der = CertificateRevocationListDer::from_pem_file(&crl).unwrap();
            let (_, list) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
            let listed: Vec<String> =
                list.iter_revoked_certificates().map(|r| cert::serial_hex(r.raw_serial())).collect();
            assert_eq!(listed, [a.clone(), b.clone()], "{}", crl.display());
        }
        // Both ends still load a directory whose CRL lists others.
        client_config(&dir).unwrap();
        server_config(&dir.join("n1")).unwrap();
        assert!(ca::revoke(&ca_dir, &["not-a-serial".into()], None).unwrap_err().contains("hexadecimal"));
    }
}
