// SPDX-License-Identifier: GPL-2.0-or-later
//! Authenticated images: a MAC under the cluster's key over everything a
//! restore trusts.
//!
//! CRCs find damage, not tampering: whoever can write a checkpoint
//! directory can change a page and its CRC, and so put code into a guest
//! at its next restart. An image written with a key ([`ImageKey`]) also
//! carries a keyed BLAKE3 tag of every page (PAGE_TAGS) and of every other
//! section, and one MAC (in AUTH) over the header, the whole directory and
//! those tags. A reader given the key checks the MAC when it opens the
//! image and each tag on the very bytes it then uses, so a file changed
//! after it was checked still cannot slip in.
//!
//! The key is 32 bytes, kept as 64 hex digits in a file only its owner
//! can read (`mekha key new`). Six keys are derived from it, one per use
//! (BLAKE3's `derive_key`; two of them seal disk layers, `crate::disk`),
//! and a key id that tells "written under another
//! key" from "changed".

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use zeroize::Zeroizing;

use super::format::{Section, SectionKind};
use crate::PAGE_SIZE;

/// Bytes of a page's tag: BLAKE3's output truncated to 128 bits, as
/// usual for a MAC (a forgery still takes 2^128 tries).
pub const PAGE_TAG_LEN: usize = 16;
/// One page's tag.
pub type PageTag = [u8; PAGE_TAG_LEN];
/// Bytes of a section's tag and of the image's MAC.
pub const TAG_LEN: usize = 32;
/// AUTH format version.
const AUTH_VERSION: u32 = 1;

/// The cluster's image key.
#[derive(Clone)]
pub struct ImageKey {
    pages: Zeroizing<[u8; 32]>,
    sections: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
    manifest: Zeroizing<[u8; 32]>,
    disk_tags: Zeroizing<[u8; 32]>,
    disk_mac: Zeroizing<[u8; 32]>,
    id: [u8; 16],
    /// The key itself, as its file holds it (to hand on to QEMU).
    hex: Zeroizing<String>,
}

impl fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageKey({})", self.id_hex())
    }
}

impl ImageKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: &[u8; 32]) -> ImageKey {
        let derive = |purpose: &str| Zeroizing::new(blake3::derive_key(purpose, key));
        let id = blake3::derive_key("mekha 2026-12 image key id", key);
        ImageKey {
            pages: derive("mekha 2026-12 image page tags"),
            sections: derive("mekha 2026-12 image section tags"),
            mac: derive("mekha 2026-12 image MAC"),
            manifest: derive("mekha 2026-12 manifest MAC"),
            disk_tags: derive("mekha 2026-12 disk layer cluster tags"),
            disk_mac: derive("mekha 2026-12 disk layer MAC"),
            id: id[..16].try_into().expect("16 bytes"),
            hex: Zeroizing::new(hex(key)),
        }
    }

    /// A key from its text: 64 hex digits, surrounding white space allowed.
    pub fn parse(text: &[u8]) -> Result<ImageKey, String> {
        let text = std::str::from_utf8(text).map_err(|_| "an image key is 64 hex digits, not binary".to_owned())?;
        let text = text.trim();
        let mut key = Zeroizing::new([0u8; 32]);
        if !unhex(text, key.as_mut()) {
            return Err(format!("an image key is 64 hex digits, not {} characters of text", text.len()));
        }
        Ok(ImageKey::from_bytes(&key))
    }

    /// Reads a key file, refused when others than its owner may read it
    /// (whoever reads it can forge images).
    pub fn load(path: &Path) -> Result<ImageKey, String> {
        let what = |e: std::io::Error| format!("reading the image key {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(what)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the image key {} may be read by others than its owner (mode {:o}): chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let text = Zeroizing::new(std::fs::read(path).map_err(what)?);
        ImageKey::parse(&text).map_err(|e| format!("the image key {}: {e}", path.display()))
    }

    /// The key as its file holds it, for QEMU's `secret` object.
    pub fn to_hex(&self) -> &str {
        &self.hex
    }

    /// Names the key without revealing it.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The key id as 32 lowercase hex digits, as messages and `inspect` show it.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The tag of one page's bytes.
    pub fn page_tag(&self, page: &[u8]) -> PageTag {
        debug_assert_eq!(page.len(), PAGE_SIZE);
        blake3::keyed_hash(&self.pages, page).as_bytes()[..PAGE_TAG_LEN].try_into().expect("16 bytes")
    }

    /// The tag of a section's bytes.
    pub fn section_tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        *self.section_hasher().update(bytes).finalize().as_bytes()
    }

    /// A section's tag, computed piece by piece.
    pub(crate) fn section_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.sections)
    }

    /// The MAC of a committed manifest's bytes.
    pub fn manifest_mac(&self, bytes: &[u8]) -> Mac {
        Mac(*blake3::keyed_hash(&self.manifest, bytes).as_bytes())
    }

    /// The tag of one data cluster of a disk layer (`crate::disk`).
    pub(crate) fn disk_cluster_tag(&self, cluster: &[u8]) -> PageTag {
        blake3::keyed_hash(&self.disk_tags, cluster).as_bytes()[..PAGE_TAG_LEN].try_into().expect("16 bytes")
    }

    /// A disk layer's MAC, computed piece by piece (`crate::disk`).
    pub(crate) fn disk_mac_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.disk_mac)
    }

    /// The image's MAC: over the header's fields, the directory (all but
    /// AUTH's own entry, in kind order) and AUTH's tags.
    fn mac(&self, header: &MacHeader, sections: &[Section], tags: &[u8]) -> [u8; TAG_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.mac);
        hasher.update(header.as_bytes());
        let mut entries: Vec<&Section> = sections.iter().filter(|s| s.kind != SectionKind::Auth).collect();
        entries.sort_by_key(|s| s.kind.number());
        for s in entries {
            hasher.update(s.to_entry().as_bytes());
        }
        hasher.update(tags);
        *hasher.finalize().as_bytes()
    }
}

/// The header fields the MAC covers.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct MacHeader {
    pub major: zerocopy::byteorder::little_endian::U16,
    pub minor: zerocopy::byteorder::little_endian::U16,
    pub page_size: U32,
    pub created_unix_ns: U64,
}

/// The fixed start of the AUTH section (32 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct AuthHead {
    version: U32,
    tag_count: U32,
    key_id: [u8; 16],
    reserved: [u8; 8],
}

/// One section's tag in AUTH (40 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct TagRecord {
    kind: U32,
    reserved: U32,
    tag: [u8; TAG_LEN],
}

const _: () = assert!(size_of::<AuthHead>() == 32);
const _: () = assert!(size_of::<TagRecord>() == 40);
const _: () = assert!(size_of::<MacHeader>() == 16);

/// An image's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; TAG_LEN]);

impl Mac {
    /// The MAC as 64 lowercase hex digits, as a manifest records it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads a MAC written by [`to_hex`](Self::to_hex); says why when
    /// `text` is not one.
    pub fn parse(text: &str) -> Result<Mac, String> {
        let mut mac = [0u8; TAG_LEN];
        match unhex(text, &mut mac) {
            true => Ok(Mac(mac)),
            false => Err(format!("a MAC is {} hex digits, not {text:?}", 2 * TAG_LEN)),
        }
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lower-case hex digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `out` from exactly `2 * out.len()` hex digits; false if `text`
/// is not that.
fn unhex(text: &str, out: &mut [u8]) -> bool {
    if text.len() != 2 * out.len() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digits");
    }
    true
}

/// The AUTH section of an image being written: each section's tag (all
/// but RAM and AUTH itself, whose directory entry is not final yet), then
/// the MAC over `header` and the complete directory.
pub(crate) fn seal(
    key: &ImageKey,
    header: &MacHeader,
    sections: &[Section],
    payloads: &[(SectionKind, &[u8])],
) -> (Vec<u8>, Mac) {
    let mut tags = AuthHead {
        version: U32::new(AUTH_VERSION),
        tag_count: U32::new(u32::try_from(payloads.len()).expect("one per section")),
        key_id: key.id,
        reserved: [0; 8],
    }
    .as_bytes()
    .to_vec();
    for (kind, bytes) in payloads {
        let record = TagRecord { kind: U32::new(kind.number()), reserved: U32::new(0), tag: key.section_tag(bytes) };
        tags.extend_from_slice(record.as_bytes());
    }
    let mac = key.mac(header, sections, &tags);
    tags.extend_from_slice(&mac);
    (tags, Mac(mac))
}

/// What a reader trusts once an image's AUTH checked out under its key.
#[derive(Debug, Clone)]
pub(crate) struct Seal {
    pub key: ImageKey,
    pub mac: Mac,
    tags: Vec<(SectionKind, [u8; TAG_LEN])>,
}

/// Why an image's seal does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SealError {
    /// Malformed AUTH bytes.
    Malformed(String),
    /// Sealed under another key (its id).
    OtherKey(String),
    /// The MAC does not match: something the MAC covers was changed.
    Mismatch,
}

impl Seal {
    /// Checks AUTH's bytes (already read) against the key and the directory.
    pub fn open(key: &ImageKey, header: &MacHeader, sections: &[Section], auth: &[u8]) -> Result<Seal, SealError> {
        let malformed = |why: &str| SealError::Malformed(why.to_owned());
        let (head, rest) =
            AuthHead::read_from_prefix(auth).map_err(|_| malformed("AUTH is shorter than its header"))?;
        if head.version.get() != AUTH_VERSION {
            return Err(SealError::Malformed(format!(
                "AUTH version {} (this mekha reads {AUTH_VERSION})",
                head.version.get()
            )));
        }
        if head.key_id != key.id {
            return Err(SealError::OtherKey(hex(&head.key_id)));
        }
        let count = head.tag_count.get() as usize;
        let records_len = count.checked_mul(size_of::<TagRecord>()).filter(|&n| n + TAG_LEN == rest.len());
        let Some(records_len) = records_len else {
            return Err(malformed("AUTH's length does not match its tag count"));
        };
        let signed_len = size_of::<AuthHead>() + records_len;
        let stored: [u8; TAG_LEN] = auth[signed_len..].try_into().expect("TAG_LEN bytes");
        // Constant time: the comparison must not tell how much matched.
        if !constant_time_eq::constant_time_eq_32(&key.mac(header, sections, &auth[..signed_len]), &stored) {
            return Err(SealError::Mismatch);
        }
        let records = <[TagRecord]>::ref_from_bytes(&rest[..records_len]).expect("whole records");
        let tags = records.iter().map(|r| (SectionKind::from_number(r.kind.get()), r.tag)).collect();
        Ok(Seal { key: key.clone(), mac: Mac(stored), tags })
    }

    /// Whether `computed` is the tag the writer sealed for section `kind`
    /// (none sealed: never).
    pub fn section_tag_is(&self, kind: SectionKind, computed: &[u8; TAG_LEN]) -> bool {
        let sealed = self.tags.iter().find(|(k, _)| *k == kind).map(|(_, tag)| tag);
        sealed.is_some_and(|tag| constant_time_eq::constant_time_eq_32(tag, computed))
    }

    /// Whether `bytes` are what the writer sealed as section `kind`.
    pub fn section_matches(&self, kind: SectionKind, bytes: &[u8]) -> bool {
        self.section_tag_is(kind, &self.key.section_tag(bytes))
    }
}
