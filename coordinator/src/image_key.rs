// SPDX-License-Identifier: GPL-2.0-or-later
//! The cluster's image key (`--key-file`): made by `mekha key new`, lent
//! to each QEMU as a `secret` object for the one command that reads it.
//!
//! With a key, every image carries a MAC over what a restore trusts, and
//! the manifest a MAC over the images' MACs: whoever can write the
//! checkpoint directory but does not hold the key can neither change an
//! image nor put another (an older one, another VM's) in its place
//! without the restart refusing it. The key reaches QEMU over the QMP
//! connection (a local socket, ssh, or an agent's TLS), and is removed
//! from QEMU as soon as the command has read it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::session::{checkpoint, restore, Command};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use zeroize::Zeroizing;

use crate::qmp::{Qmp, QmpError};

/// The id of the `secret` object a command reads the key from.
pub const SECRET_ID: &str = "mekha-image-key";

/// Writes a new random key to `path` (mode 0600; an existing file is
/// never replaced: images sealed under it would become unreadable).
pub fn create(path: &Path) -> Result<ImageKey, String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(bytes.as_mut()).map_err(|_| "the system's random generator failed".to_owned())?;
    let key = ImageKey::from_bytes(&bytes);
    let what = |e: std::io::Error| format!("writing the image key {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(what)?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes()).map_err(what)?;
    file.sync_all().map_err(what)?;
    Ok(key)
}

/// Puts the key into the QEMU behind `qmp` (replacing one a killed
/// coordinator may have left there).
pub async fn lend(qmp: &Qmp, key: &ImageKey) -> Result<(), QmpError> {
    take_back(qmp).await;
    let args = json!({ "qom-type": "secret", "id": SECRET_ID, "data": key.to_hex(), "format": "raw" });
    qmp.execute("object-add", args).await.map(drop)
}

/// Removes the key from the QEMU behind `qmp` (none there is fine).
pub async fn take_back(qmp: &Qmp) {
    let _ = qmp.execute("object-del", json!({ "id": SECRET_ID })).await;
}

/// The arguments of a mekha command that takes an image key.
pub trait KeySecret {
    /// The id of the `secret` object holding the key.
    fn key_secret(&mut self) -> &mut Option<String>;
}

impl KeySecret for checkpoint::Args {
    fn key_secret(&mut self) -> &mut Option<String> {
        &mut self.key_secret
    }
}

impl KeySecret for restore::Args {
    fn key_secret(&mut self) -> &mut Option<String> {
        &mut self.key_secret
    }
}

/// Runs mekha command `C` with `args` on `qmp`, with the key lent for it
/// when there is one (`key-secret` names it).
pub async fn call_with<C: Command>(qmp: &Qmp, key: Option<&ImageKey>, mut args: C::Args) -> Result<C::Reply, QmpError>
where
    C::Args: KeySecret,
{
    let Some(key) = key else { return qmp.call::<C>(&args).await };
    lend(qmp, key).await?;
    *args.key_secret() = Some(SECRET_ID.to_owned());
    let outcome = qmp.call::<C>(&args).await;
    take_back(qmp).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_key_is_private_loads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ImageKey::load(&path).unwrap().id(), key.id());
        assert!(create(&path).unwrap_err().contains("exists"), "replaced a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let refused = ImageKey::load(&path).unwrap_err();
        assert!(refused.contains("chmod 600"), "{refused}");
        assert_ne!(create(&dir.path().join("other.key")).unwrap().id(), key.id());
    }
}
