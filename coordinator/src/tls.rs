// SPDX-License-Identifier: GPL-2.0-or-later
//! Mutually authenticated TLS between the coordinator and `mekha agent`s.
//!
//! Both ends hold a certificate signed by the cluster's CA and accept only
//! a peer whose certificate chains to it: an agent takes commands only
//! from a client certificate (extended key usage clientAuth), the
//! coordinator talks only to an agent certificate (serverAuth) issued for
//! the name or address it dialled. A TLS directory holds, as PEM:
//!
//! ```text
//! ca.pem                          the CA certificate (both ends)
//! client.pem, client-key.pem      the coordinator's certificate and key
//! agent.pem, agent-key.pem        an agent's certificate and key
//! ```
//!
//! `mekha tls init` makes such a CA and its certificates (see [`init`]);
//! certificates from an existing PKI work as well.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub const CA: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CLIENT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
pub const AGENT: &str = "agent.pem";
pub const AGENT_KEY: &str = "agent-key.pem";

/// Where the TLS files are unless a command says otherwise.
pub fn default_dir() -> PathBuf {
    std::env::var_os("MEKHA_TLS_DIR").map_or_else(|| PathBuf::from("/etc/mekha/tls"), PathBuf::from)
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

/// The agent's side: its certificate, and clients must present one the CA
/// signed.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
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
/// present one the CA signed for the name dialled.
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(certs(&dir.join(CLIENT))?, key(&dir.join(CLIENT_KEY))?)
        .map_err(|e| format!("{}: {e}", dir.join(CLIENT).display()))?;
    Ok(Arc::new(config))
}

/// Makes (or extends) a TLS setup in `dir`: a CA (kept if `dir` has one),
/// the coordinator's client certificate, and for each of `agents` (host
/// names or addresses the coordinator dials) a directory `dir/NAME/` with
/// what that host's agent needs. Returns the files written.
pub fn init(dir: &Path, agents: &[String]) -> Result<Vec<PathBuf>, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| format!("making certificates: {e}");
    mekha_ckpt_core::private::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();

    // The CA's parameters are fixed, so an existing CA key signs again.
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "mekha cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    validity(&mut ca, 20);
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = if ca_key_path.exists() {
        let pem = fs::read_to_string(&ca_key_path).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
        KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?
    } else {
        let key = KeyPair::generate().map_err(err)?;
        write_private(&ca_key_path, &key.serialize_pem(), &mut written)?;
        write_public(&dir.join(CA), &ca.self_signed(&key).map_err(err)?.pem(), &mut written)?;
        key
    };
    let ca_pem = fs::read_to_string(dir.join(CA)).map_err(|e| format!("{}: {e}", dir.join(CA).display()))?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String), String> {
        let mut params = CertificateParams::new(names).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 5);
        let key = KeyPair::generate().map_err(err)?;
        Ok((params.signed_by(&key, &issuer).map_err(err)?.pem(), key.serialize_pem()))
    };
    if !dir.join(CLIENT).exists() {
        let (cert, key) = leaf(Vec::new(), "mekha coordinator", ExtendedKeyUsagePurpose::ClientAuth)?;
        write_public(&dir.join(CLIENT), &cert, &mut written)?;
        write_private(&dir.join(CLIENT_KEY), &key, &mut written)?;
    }
    for name in agents {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("agent name {name:?}: give a host name or an IP address"));
        }
        let agent_dir = dir.join(name);
        mekha_ckpt_core::private::create_dir_all(&agent_dir).map_err(|e| format!("{}: {e}", agent_dir.display()))?;
        let (cert, key) =
            leaf(vec![name.clone()], &format!("mekha agent {name}"), ExtendedKeyUsagePurpose::ServerAuth)?;
        write_public(&agent_dir.join(CA), &ca_pem, &mut written)?;
        write_public(&agent_dir.join(AGENT), &cert, &mut written)?;
        write_private(&agent_dir.join(AGENT_KEY), &key, &mut written)?;
    }
    Ok(written)
}

/// Valid from a day ago (hosts' clocks differ) for `years`.
fn validity(params: &mut rcgen::CertificateParams, years: i32) {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil_from_days(days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

/// Days since 1970-01-01 to a (year, month, day) date (proleptic
/// Gregorian; H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn write_public(path: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    written.push(path.to_owned());
    Ok(())
}

/// Private keys: owner-only from the start, never world-readable.
fn write_private(path: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<(), String> {
    use std::io::Write;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    written.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn init_makes_configs_both_ends_accept_and_extends_with_the_same_ca() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tls");
        let dir = &dir;
        init(dir, &["node1".into()]).unwrap();
        client_config(dir).unwrap();
        server_config(&dir.join("node1")).unwrap();
        let ca = fs::read(dir.join(CA)).unwrap();
        let written = init(dir, &["10.0.0.7".into()]).unwrap();
        assert_eq!(written.len(), 3, "only the new agent's files: {written:?}");
        assert_eq!(fs::read(dir.join("10.0.0.7").join(CA)).unwrap(), ca);
        server_config(&dir.join("10.0.0.7")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(CLIENT_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the client key is private");
        for d in [dir.to_owned(), dir.join("node1")] {
            let mode = fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{} is its owner's only", d.display());
        }
        assert!(init(dir, &["../x".into()]).is_err());
        assert!(client_config(&dir.join("nowhere")).unwrap_err().contains("ca.pem"));
    }
}
