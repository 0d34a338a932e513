// SPDX-License-Identifier: GPL-2.0-or-later
//! What a certificate says about its holder: its name, serial, role and
//! lifetime, read from the DER that rustls verified or a PEM file.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// What a client certificate allows on an agent, carried in its subject
/// as the organizational unit `mekha-ROLE`. Each role includes the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads only: an agent's storage report, its VMs' pids, checks of
    /// committed images.
    Monitor,
    /// Checkpoints and restores running VMs: QMP sockets, checkpoint parts.
    Operator,
    /// Starts and stops VMs (QEMU as root with the spec's arguments).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The organizational unit that carries the role.
    pub fn unit(self) -> String {
        format!("{ROLE_UNIT_PREFIX}{}", self.as_str())
    }

    fn from_unit(unit: &str) -> Option<Role> {
        match unit.strip_prefix(ROLE_UNIT_PREFIX)? {
            "monitor" => Some(Role::Monitor),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const ROLE_UNIT_PREFIX: &str = "mekha-";

/// A certificate's holder as refusals and logs name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject's common name ("" if none).
    pub name: String,
    /// The serial number in hex, as `mekha tls revoke` takes it.
    pub serial: String,
    /// `None`: the certificate carries no mekha role (one from before
    /// roles, or another PKI's).
    pub role: Option<Role>,
    /// DNS names and IP addresses it is valid for (an agent's).
    pub hosts: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl Identity {
    pub fn from_der(der: &[u8]) -> Result<Identity, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
        let subject = cert.subject();
        let name = subject.iter_common_name().find_map(|a| a.as_str().ok()).unwrap_or_default().to_owned();
        let role = subject.iter_organizational_unit().filter_map(|a| a.as_str().ok()).find_map(Role::from_unit);
        let mut hosts = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for general in &san.value.general_names {
                match general {
                    GeneralName::DNSName(dns) => hosts.push((*dns).to_owned()),
                    GeneralName::IPAddress(ip) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                            hosts.push(std::net::Ipv4Addr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                            hosts.push(std::net::Ipv6Addr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Identity {
            name,
            serial: serial_hex(cert.raw_serial()),
            role,
            hosts,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The first certificate of PEM file `path`.
    pub fn from_pem_file(path: &Path) -> Result<Identity, String> {
        let der = CertificateDer::from_pem_file(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Identity::from_der(&der).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Where its lifetime stands at `now` (seconds since the epoch).
    pub fn lifetime(&self, now: i64) -> Lifetime {
        if now >= self.not_after {
            Lifetime::Expired
        } else if self.not_after - now < (self.not_after - self.not_before) / 3 {
            // A third of its life left: time to renew, whatever its length.
            Lifetime::ExpiresSoon
        } else {
            Lifetime::Valid
        }
    }

    /// Its expiry date, `YYYY-MM-DD HH:MM UTC`.
    pub fn expiry(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after).map_or_else(
            |_| format!("{} s after the epoch", self.not_after),
            |t| format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), t.month() as u8, t.day(), t.hour(), t.minute()),
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = self.role.map_or("no mekha role", Role::as_str);
        write!(f, "{:?} (serial {}, {role})", self.name, self.serial)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Valid,
    /// Less than a third of its lifetime left.
    ExpiresSoon,
    Expired,
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A serial number's DER content as lower-case hex, leading zero bytes
/// dropped (`openssl x509 -serial` prints the same digits).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a serial as `mekha tls` prints it (colons, as openssl and
/// x509-parser print them, are accepted too).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.trim().trim_start_matches("0x").chars().filter(|c| *c != ':').collect();
    let bad = || format!("serial {text:?}: expected hexadecimal digits");
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
    Ok(bytes[start..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_and_parse_alike() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(parse_serial("8f01").unwrap(), [0x8f, 0x01]);
        assert_eq!(parse_serial("00:8F:01").unwrap(), [0x8f, 0x01]);
        assert_eq!(parse_serial("f01").unwrap(), [0x0f, 0x01]);
        assert!(parse_serial("xyz").is_err() && parse_serial("").is_err());
    }

    #[test]
    fn a_third_of_the_lifetime_left_is_soon() {
        let id = |not_before, not_after| Identity {
            name: String::new(),
            serial: String::new(),
            role: None,
            hosts: Vec::new(),
            not_before,
            not_after,
        };
        let cert = id(0, 90);
        assert_eq!(cert.lifetime(10), Lifetime::Valid);
        assert_eq!(cert.lifetime(61), Lifetime::ExpiresSoon);
        assert_eq!(cert.lifetime(90), Lifetime::Expired);
        assert_eq!(cert.lifetime(1000), Lifetime::Expired);
    }

    #[test]
    fn roles_round_trip_through_their_unit() {
        for role in [Role::Monitor, Role::Operator, Role::Admin] {
            assert_eq!(Role::from_unit(&role.unit()), Some(role));
        }
        assert_eq!(Role::from_unit("admin"), None, "only mekha's own units carry a role");
        assert!(Role::Monitor < Role::Operator && Role::Operator < Role::Admin);
    }
}
