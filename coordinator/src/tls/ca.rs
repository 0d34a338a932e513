// SPDX-License-Identifier: GPL-2.0-or-later
//! The cluster's CA (`mekha tls ...`): its key in a directory of its own,
//! the bundles it issues to the coordinator and the agents, renewal, and
//! the revocation list it signs.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};

use super::cert::{parse_serial, serial_hex, Identity, Role};
use super::{AGENT, AGENT_KEY, CA, CA_KEY, CLIENT, CLIENT_KEY, CRL};

/// Lifetime of the CA's own certificate.
const CA_YEARS: i64 = 10;
/// The coordinator's client certificate from `init`.
pub const COORDINATOR_NAME: &str = "mekha coordinator";

fn rcgen_err(e: rcgen::Error) -> String {
    format!("making certificates: {e}")
}

/// The CA of a CA directory, ready to sign.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, as every bundle carries it.
    pem: String,
}

/// A certificate just issued and its new key.
struct Leaf {
    cert: String,
    key: String,
    serial: String,
}

impl Ca {
    /// The CA's parameters are fixed, so its key signs again whenever it
    /// is loaded (the issuer's name and key identifier stay the same).
    fn params() -> CertificateParams {
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "mekha cluster CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca
    }

    /// The CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, String> {
        let key_path = dir.join(CA_KEY);
        let pem = fs::read_to_string(&key_path).map_err(|e| {
            format!("{}: {e} (the CA directory: where `mekha tls init --ca-dir` put the CA)", key_path.display())
        })?;
        let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let cert = fs::read_to_string(dir.join(CA)).map_err(|e| format!("{}: {e}", dir.join(CA).display()))?;
        let ca = Ca { dir: dir.to_owned(), issuer: Issuer::new(Ca::params(), key), pem: cert };
        if !dir.join(CRL).exists() {
            // A CA from before revocation lists: its first, empty one.
            ca.sign_crl(Vec::new(), 1)?;
        }
        Ok(ca)
    }

    /// The CA in `dir`, made there (key, certificate, empty CRL) if `dir`
    /// has none; what it wrote is added to `written`.
    pub fn open_or_create(dir: &Path, written: &mut Vec<PathBuf>) -> Result<Ca, String> {
        mekha_ckpt_core::private::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if dir.join(CA_KEY).exists() {
            return Ca::open(dir);
        }
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = Ca::params();
        set_validity(&mut params, Duration::days(365 * CA_YEARS));
        let cert = params.self_signed(&key).map_err(rcgen_err)?.pem();
        write_private(&dir.join(CA_KEY), &key.serialize_pem(), written)?;
        write_file(&dir.join(CA), &cert, written)?;
        let ca = Ca { dir: dir.to_owned(), issuer: Issuer::new(Ca::params(), key), pem: cert };
        ca.sign_crl(Vec::new(), 1)?;
        written.push(dir.join(CRL));
        Ok(ca)
    }

    fn issue(&self, mut params: CertificateParams, days: u32) -> Result<Leaf, String> {
        if days == 0 {
            return Err("--days: give at least 1".into());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, Duration::days(i64::from(days)));
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        // rcgen derives the serial from the (new) public key: unique.
        let serial = Identity::from_der(cert.der())?.serial;
        Ok(Leaf { cert: cert.pem(), key: key.serialize_pem(), serial })
    }

    fn issue_client(&self, name: &str, role: Role, days: u32) -> Result<Leaf, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationalUnitName, role.unit());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, days)
    }

    fn issue_agent(&self, host: &str, days: u32) -> Result<Leaf, String> {
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(rcgen_err)?;
        params.distinguished_name.push(DnType::CommonName, format!("mekha agent {host}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, days)
    }

    fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }

    /// Signs and writes the CA's CRL listing `revoked`.
    fn sign_crl(&self, revoked: Vec<RevokedCertParams>, number: u64) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::days(1),
            // Agents do not enforce it (a CRL stays in force until
            // replaced); it only has to lie after this_update.
            next_update: now + Duration::days(365 * CA_YEARS),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(rcgen_err)?.pem().map_err(rcgen_err)?;
        replace_file(&self.crl_path(), &crl)
    }

    /// Adds `serials` to the CA's CRL; answers the serials newly revoked.
    fn revoke(&self, serials: &[Vec<u8>]) -> Result<Vec<String>, String> {
        let path = self.crl_path();
        let der = CertificateRevocationListDer::from_pem_file(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| format!("{}: {e}", path.display()))?;
        let number = crl.crl_number().and_then(|n| u64::try_from(n).ok()).unwrap_or(0) + 1;
        let mut revoked: Vec<RevokedCertParams> = crl
            .iter_revoked_certificates()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let mut added = Vec::new();
        for serial in serials {
            let hex = serial_hex(serial);
            if revoked.iter().any(|r| serial_hex(&r.serial_number.to_bytes()) == hex) {
                continue;
            }
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: OffsetDateTime::now_utc(),
                reason_code: None,
                invalidity_date: None,
            });
            added.push(hex);
        }
        self.sign_crl(revoked, number)?;
        Ok(added)
    }

    /// The files every bundle carries: the CA's certificate and CRL.
    fn write_trust(&self, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), String> {
        let crl = fs::read_to_string(self.crl_path()).map_err(|e| format!("{}: {e}", self.crl_path().display()))?;
        write_file(&dir.join(CA), &self.pem, written)?;
        write_file(&dir.join(CRL), &crl, written)
    }
}

/// Valid from a day ago (hosts' clocks differ) for `lifetime`.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + lifetime;
}

/// A coordinator's TLS directory still holding the CA key (the layout of
/// mekha before the CA had a directory of its own) is refused: whoever
/// reads the coordinator's key must not be able to mint certificates.
fn refuse_ca_key_in(dir: &Path) -> Result<(), String> {
    if dir.join(CA_KEY).exists() {
        return Err(format!(
            "{} holds the CA's key beside the coordinator's ({}, from an earlier `mekha tls init`): \
             move the CA to a directory of its own, e.g. `mkdir -m 700 /etc/mekha/ca && \
             mv {0}/{CA_KEY} /etc/mekha/ca/ && cp {0}/{CA} /etc/mekha/ca/`, then pass --ca-dir /etc/mekha/ca",
            dir.display(),
            CA_KEY,
        ));
    }
    Ok(())
}

/// `mekha tls init`: the CA in `ca_dir` (made if missing); in `dir`, the
/// coordinator's bundle (an admin client certificate, unless `dir` has
/// one) and for each of `agents` (host names or addresses the coordinator
/// dials) a bundle `dir/NAME/` for that host. Returns the files written.
pub fn init(ca_dir: &Path, dir: &Path, agents: &[String], days: u32) -> Result<Vec<PathBuf>, String> {
    if same_dir(ca_dir, dir) {
        return Err(format!("the CA directory and the TLS directory are both {}: give them apart", dir.display()));
    }
    refuse_ca_key_in(dir)?;
    for name in agents {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("agent name {name:?}: give a host name or an IP address"));
        }
    }
    let mut written = Vec::new();
    let ca = Ca::open_or_create(ca_dir, &mut written)?;
    mekha_ckpt_core::private::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A client certificate from before roles would be refused by every
    // agent: issued again, as the admin it was.
    let current = Identity::from_pem_file(&dir.join(CLIENT)).ok();
    if current.as_ref().is_none_or(|c| c.role.is_none()) {
        let name = current.map_or_else(|| COORDINATOR_NAME.to_owned(), |c| c.name);
        write_client(&ca, dir, &name, Role::Admin, days, &mut written)?;
    }
    for name in agents {
        let agent_dir = dir.join(name);
        mekha_ckpt_core::private::create_dir_all(&agent_dir).map_err(|e| format!("{}: {e}", agent_dir.display()))?;
        write_agent(&ca, &agent_dir, name, days, &mut written)?;
    }
    Ok(written)
}

/// `mekha tls client`: a client bundle for `name` with `role` in `dir`
/// (replacing the one there). Returns the files written and the serial.
pub fn client(ca_dir: &Path, dir: &Path, name: &str, role: Role, days: u32) -> Result<(Vec<PathBuf>, String), String> {
    refuse_ca_key_in(dir)?;
    let ca = Ca::open(ca_dir)?;
    mekha_ckpt_core::private::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let serial = write_client(&ca, dir, name, role, days, &mut written)?;
    Ok((written, serial))
}

/// `mekha tls renew`: new keys and certificates for the bundle in `dir`
/// (its client and/or agent certificate), for the same name, role and
/// hosts, valid `days` from now. The old certificates stay valid until
/// they expire or are revoked. Returns the files written.
pub fn renew(ca_dir: &Path, dir: &Path, days: u32) -> Result<Vec<PathBuf>, String> {
    refuse_ca_key_in(dir)?;
    let ca = Ca::open(ca_dir)?;
    let mut written = Vec::new();
    if dir.join(CLIENT).exists() {
        let old = Identity::from_pem_file(&dir.join(CLIENT))?;
        let role = old.role.ok_or_else(|| {
            format!(
                "{}: {old} carries no mekha role: issue a new one with `mekha tls client --role`",
                dir.join(CLIENT).display()
            )
        })?;
        write_client(&ca, dir, &old.name, role, days, &mut written)?;
    }
    if dir.join(AGENT).exists() {
        let old = Identity::from_pem_file(&dir.join(AGENT))?;
        let [host] = old.hosts.as_slice() else {
            return Err(format!(
                "{}: expected one host name in {old}, found {:?}",
                dir.join(AGENT).display(),
                old.hosts
            ));
        };
        write_agent(&ca, dir, host, days, &mut written)?;
    }
    if written.is_empty() {
        return Err(format!("{}: no {CLIENT} or {AGENT} to renew", dir.display()));
    }
    Ok(written)
}

/// `mekha tls revoke`: adds each of `targets` (a certificate file, or a
/// serial in hex) to the CA's CRL, and copies the CRL into the bundles
/// under `dir` (`dir` and its subdirectories holding this CA's ca.pem).
/// Returns the serials newly revoked and the files written.
pub fn revoke(ca_dir: &Path, targets: &[String], dir: Option<&Path>) -> Result<(Vec<String>, Vec<PathBuf>), String> {
    let ca = Ca::open(ca_dir)?;
    let mut serials = Vec::new();
    for target in targets {
        let path = Path::new(target);
        if path.exists() {
            let id = Identity::from_pem_file(path)?;
            serials.push(parse_serial(&id.serial)?);
        } else {
            serials.push(parse_serial(target).map_err(|e| format!("{e} (and no file {target} exists)"))?);
        }
    }
    let added = ca.revoke(&serials)?;
    let mut written = vec![ca.crl_path()];
    if let Some(dir) = dir {
        let mut bundles = vec![dir.to_owned()];
        if let Ok(entries) = fs::read_dir(dir) {
            bundles.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        for bundle in bundles {
            if fs::read_to_string(bundle.join(CA)).is_ok_and(|pem| pem == ca.pem) && !same_dir(&bundle, ca_dir) {
                ca.write_trust(&bundle, &mut written)?;
            }
        }
    }
    Ok((added, written))
}

fn write_client(
    ca: &Ca,
    dir: &Path,
    name: &str,
    role: Role,
    days: u32,
    written: &mut Vec<PathBuf>,
) -> Result<String, String> {
    let leaf = ca.issue_client(name, role, days)?;
    ca.write_trust(dir, written)?;
    write_private(&dir.join(CLIENT_KEY), &leaf.key, written)?;
    write_file(&dir.join(CLIENT), &leaf.cert, written)?;
    Ok(leaf.serial)
}

fn write_agent(ca: &Ca, dir: &Path, host: &str, days: u32, written: &mut Vec<PathBuf>) -> Result<String, String> {
    let leaf = ca.issue_agent(host, days)?;
    ca.write_trust(dir, written)?;
    write_private(&dir.join(AGENT_KEY), &leaf.key, written)?;
    write_file(&dir.join(AGENT), &leaf.cert, written)?;
    Ok(leaf.serial)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Certificates and CRLs: public, but replaced whole (an agent reloading
/// never reads half a file).
fn write_file(path: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<(), String> {
    replace_file(path, text)?;
    written.push(path.to_owned());
    Ok(())
}

fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut file = tempfile::Builder::new().prefix(".mekha-tls-").tempfile_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(err)?;
    file.as_file().sync_all().map_err(err)?;
    // tempfile makes it 0600; certificates may be read by anyone.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).map_err(err)?;
    file.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Private keys: owner-only from the start, never world-readable.
fn write_private(path: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<(), String> {
    use std::io::Write;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mekha_ckpt_core::private::FILE_MODE)
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
    fn an_expired_certificate_of_its_own_stops_either_end() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        init(&ca_dir, &dir, &["n1".into()], 90).unwrap();
        let ca = Ca::open(&ca_dir).unwrap();
        let now = OffsetDateTime::now_utc();
        let expired = |path: &Path, mut params: CertificateParams, key_path: &Path| {
            params.not_before = now - Duration::days(30);
            params.not_after = now - Duration::days(1);
            let key = KeyPair::generate().unwrap();
            fs::write(path, params.signed_by(&key, &ca.issuer).unwrap().pem()).unwrap();
            fs::write(key_path, key.serialize_pem()).unwrap();
        };
        let mut client = CertificateParams::default();
        client.distinguished_name.push(DnType::CommonName, COORDINATOR_NAME);
        client.distinguished_name.push(DnType::OrganizationalUnitName, Role::Admin.unit());
        expired(&dir.join(CLIENT), client, &dir.join(CLIENT_KEY));
        let e = super::super::client_config(&dir).unwrap_err();
        assert!(e.contains("expired on") && e.contains("mekha tls renew"), "{e}");
        let agent = CertificateParams::new(vec!["n1".to_owned()]).unwrap();
        expired(&dir.join("n1").join(AGENT), agent, &dir.join("n1").join(AGENT_KEY));
        let e = super::super::server_config(&dir.join("n1")).unwrap_err();
        assert!(e.contains("expired on"), "{e}");
        // Renewed, both start again.
        renew(&ca_dir, &dir, 90).unwrap();
        renew(&ca_dir, &dir.join("n1"), 90).unwrap();
        super::super::client_config(&dir).unwrap();
        super::super::server_config(&dir.join("n1")).unwrap();
    }

    #[test]
    fn init_gives_a_client_certificate_from_before_roles_its_admin_role() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("tls"));
        init(&ca_dir, &dir, &[], 90).unwrap();
        // What mekha tls init wrote before roles: no organizational unit.
        let ca = Ca::open(&ca_dir).unwrap();
        let mut old = CertificateParams::default();
        old.distinguished_name.push(DnType::CommonName, "old coordinator");
        old.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = ca.issue(old, 5).unwrap();
        fs::write(dir.join(CLIENT), leaf.cert).unwrap();
        assert_eq!(Identity::from_pem_file(&dir.join(CLIENT)).unwrap().role, None);
        assert!(renew(&ca_dir, &dir, 90).unwrap_err().contains("no mekha role"));
        let written = init(&ca_dir, &dir, &[], 90).unwrap();
        assert!(written.contains(&dir.join(CLIENT)), "{written:?}");
        let now = Identity::from_pem_file(&dir.join(CLIENT)).unwrap();
        assert_eq!((now.name.as_str(), now.role), ("old coordinator", Some(Role::Admin)));
        assert!(init(&ca_dir, &dir, &[], 90).unwrap().is_empty(), "a client with a role is kept");
    }
}
