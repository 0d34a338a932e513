// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha image inspect|verify PATH`: what an image or a checkpoint holds,
//! and whether it is intact.
//!
//! PATH is one image file, or a checkpoint directory: then every VM image
//! of its latest committed generation (the one `MANIFEST.json` names).
//! Both commands exit with [`exit::DAMAGED`] when an image is damaged and
//! [`exit::FAILURE`] when one cannot be read for another reason (e.g.
//! permissions); `verify` exits 0 only when everything is intact.

use std::io;
use std::path::{Path, PathBuf};

use mekha_ckpt_core::disk::{self, Chain, DiskError};
use mekha_ckpt_core::image::{self, ImageError, ImageKey, Inspection, VerifyReport};
use mekha_ckpt_core::session::checkpoint::DiskCapture;
use mekha_ckpt_core::store::{Manifest, ManifestVm, Store};
use serde::Serialize;
use serde_json::json;

use super::exit::{self, CommandFailure};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Summarize an image, or the latest checkpoint of a directory (no RAM is read).
    Inspect {
        /// An image file, or a checkpoint directory.
        path: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum: header, sections, every page. Exit 0 only
    /// when all is intact, 5 when something is damaged.
    Verify {
        /// An image file, or a checkpoint directory.
        path: PathBuf,
        /// Also check every MAC under this image key: the manifest's, each
        /// image's, each section's and page's (anything unsealed fails).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ImageCommand) -> Result<(), CommandFailure> {
    match command {
        ImageCommand::Inspect { path, json } => run_inspect(&path, json),
        ImageCommand::Verify { path, key_file, json } => {
            let key = super::key::load(key_file.as_deref())?;
            run_verify(&path, key.as_ref(), json)
        }
    }
}

/// The images PATH stands for.
struct Target {
    /// The checkpoint when PATH is a directory.
    checkpoint: Option<(PathBuf, Manifest)>,
    images: Vec<Member>,
}

struct Member {
    /// The VM's name in the manifest (none for a lone image file).
    vm: Option<String>,
    path: PathBuf,
    recorded: Option<ManifestVm>,
}

fn target(path: &Path, key: Option<&ImageKey>) -> Result<Target, CommandFailure> {
    let failure = |message: String| CommandFailure { code: exit::FAILURE, message };
    let meta = std::fs::metadata(path).map_err(|e| failure(format!("{}: {e}", path.display())))?;
    if !meta.is_dir() {
        let images = vec![Member { vm: None, path: path.to_owned(), recorded: None }];
        return Ok(Target { checkpoint: None, images });
    }
    let store = Store::open_existing(path).map_err(|e| failure(e.to_string()))?.with_key(key.cloned());
    let manifest = store.latest().map_err(|e| CommandFailure { code: exit::DAMAGED, message: e.to_string() })?;
    let Some(manifest) = manifest else {
        return Err(failure(format!("{} holds no committed checkpoint (no MANIFEST.json)", path.display())));
    };
    let images = manifest
        .vms
        .iter()
        .map(|vm| Member {
            vm: Some(vm.name.clone()),
            path: store.resolve(&manifest, &vm.name).expect("the manifest names this VM"),
            recorded: Some(vm.clone()),
        })
        .collect();
    Ok(Target { checkpoint: Some((path.to_owned(), manifest)), images })
}

impl Member {
    fn label(&self) -> String {
        match (&self.vm, self.kept_on()) {
            (Some(vm), Some(host)) => format!("VM {vm} (on host {host}: {})", self.path.display()),
            (Some(vm), None) => format!("VM {vm} ({})", self.path.display()),
            (None, _) => self.path.display().to_string(),
        }
    }

    /// The host keeping this image in its own copy of the directory.
    fn kept_on(&self) -> Option<&str> {
        self.recorded.as_ref().and_then(|r| r.host.as_deref())
    }

    /// The exit code an error opening this image calls for. An image the
    /// manifest names but that is missing is a damaged checkpoint, unless
    /// another host keeps it (verify it there).
    fn code_for(&self, e: &ImageError) -> u8 {
        let missing = matches!(e, ImageError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound);
        if e.is_damage() || (missing && self.recorded.is_some() && self.kept_on().is_none()) {
            exit::DAMAGED
        } else {
            exit::FAILURE
        }
    }

    /// Where the image differs from what the manifest recorded at commit.
    fn manifest_problems(&self, image: &image::Image) -> Vec<String> {
        let (size, crc) = (image.file_len(), image.header().header_crc32c);
        self.recorded.as_ref().map_or_else(Vec::new, |r| r.mismatches(size, crc, image.mac()))
    }
}

/// The worst exit code among `codes`: damage outranks other failures.
fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    codes.into_iter().fold(exit::OK, |worst, code| match (worst, code) {
        (exit::DAMAGED, _) | (_, exit::DAMAGED) => exit::DAMAGED,
        (exit::OK, code) => code,
        (worst, _) => worst,
    })
}

fn checkpoint_json(target: &Target) -> serde_json::Value {
    match &target.checkpoint {
        Some((dir, m)) => json!({ "dir": dir, "generation": m.generation, "created_unix_ns": m.created_unix_ns }),
        None => serde_json::Value::Null,
    }
}

fn print_checkpoint_header(target: &Target) {
    if let Some((dir, m)) = &target.checkpoint {
        println!(
            "checkpoint {}: generation {}, committed {}, {} VM{}",
            dir.display(),
            m.generation,
            utc(m.created_unix_ns),
            m.vms.len(),
            if m.vms.len() == 1 { "" } else { "s" }
        );
    }
}

// ---- inspect ----

fn run_inspect(path: &Path, json: bool) -> Result<(), CommandFailure> {
    let target = target(path, None)?;
    let outcomes: Vec<(&Member, Result<Inspection, ImageError>)> =
        target.images.iter().map(|m| (m, image::inspect(&m.path))).collect();
    let code = worst(outcomes.iter().map(|(m, r)| r.as_ref().err().map_or(exit::OK, |e| m.code_for(e))));

    if json {
        #[derive(Serialize)]
        struct Entry<'a> {
            vm: Option<&'a str>,
            path: &'a Path,
            #[serde(skip_serializing_if = "Option::is_none")]
            inspection: Option<&'a Inspection>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<String>,
        }
        let images: Vec<Entry> = outcomes
            .iter()
            .map(|(m, r)| Entry {
                vm: m.vm.as_deref(),
                path: &m.path,
                inspection: r.as_ref().ok(),
                error: r.as_ref().err().map(ToString::to_string),
            })
            .collect();
        let doc = json!({ "checkpoint": checkpoint_json(&target), "images": images });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
    } else {
        print_checkpoint_header(&target);
        for (member, outcome) in &outcomes {
            match outcome {
                Ok(inspection) => {
                    print_inspection(member, inspection);
                    print_disks(&member.path, inspection.info.clone());
                }
                Err(e) => println!("{}: cannot be read: {e}", member.label()),
            }
        }
    }
    if code == exit::OK {
        Ok(())
    } else {
        let unreadable = outcomes.iter().filter(|(_, r)| r.is_err()).count();
        let message = match &target.checkpoint {
            Some(_) => format!("{unreadable} of {} images cannot be read", outcomes.len()),
            None => format!("image {} cannot be read", path.display()),
        };
        Err(CommandFailure { code, message })
    }
}

fn print_inspection(member: &Member, i: &Inspection) {
    let id = &i.identity;
    println!("{}", member.label());
    println!(
        "  format {}.{}, created {}, header crc32c {:#010x}",
        i.header.major,
        i.header.minor,
        utc(i.header.created_unix_ns),
        i.header.header_crc32c
    );
    println!(
        "  VM {}: machine {}, QEMU {}; written by mekha {} ({})",
        if id.vm_name.is_empty() { "(unnamed)" } else { &id.vm_name },
        id.machine,
        id.qemu_version,
        i.mekha.version,
        i.mekha.build_id
    );
    println!("  file {} ({} allocated)", size(i.file_size), size(i.allocated_bytes));
    let ram: u64 = i.ram_blocks.iter().map(|b| b.length).sum();
    println!(
        "  RAM {} in {} block{}: {} pages, {} zero",
        size(ram),
        i.ram_blocks.len(),
        if i.ram_blocks.len() == 1 { "" } else { "s" },
        i.total_pages,
        i.zero_pages
    );
    let width = i.ram_blocks.iter().map(|b| b.name.len()).max().unwrap_or(0);
    for b in &i.ram_blocks {
        println!(
            "    {:width$}  {:>10}  at {:#011x}  {:>8} pages  {:>8} zero  ({} host pages)",
            b.name,
            size(b.length),
            b.file_offset,
            b.pages,
            b.zero_pages,
            size(b.page_size)
        );
    }
    println!("  sections:");
    for s in &i.sections {
        let crc = if s.kind == "RAM" { "(per page)".to_owned() } else { format!("{:#010x}", s.crc32c) };
        let tags = match (s.required, s.known) {
            (true, _) => "required",
            (false, true) => "optional",
            (false, false) => "optional, unknown: skipped",
        };
        println!("    {:12}  at {:#011x}  {:>10}  crc32c {crc}  {tags}", s.kind, s.offset, size(s.length));
    }
    if let Some(t) = &i.time {
        println!(
            "  time: guest wall clock {:.3} s (lagging the host by {:.3} s), VM clock {:.3} s",
            t.guest_wall_ns as f64 / 1e9,
            t.lag_ns as f64 / 1e9,
            t.virtual_ns as f64 / 1e9
        );
    }
    if let Some(info) = &i.info {
        println!("  info: {info}");
    }
    for w in &i.warnings {
        println!("  warning: {w}");
    }
}

// ---- verify ----

#[derive(Serialize)]
struct Verdict<'a> {
    vm: Option<&'a str>,
    path: &'a Path,
    intact: bool,
    problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<VerifyReport>,
    /// The captured disks' layers, each checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disks: Vec<disk::VerifyReport>,
    #[serde(skip)]
    code: u8,
}

fn verify_member<'a>(member: &'a Member, key: Option<&ImageKey>) -> Verdict<'a> {
    let verdict = |problems: Vec<String>, report, code| Verdict {
        vm: member.vm.as_deref(),
        path: &member.path,
        intact: code == exit::OK,
        problems,
        report,
        disks: Vec::new(),
        code,
    };
    let image = match image::Image::open_with(&member.path, key) {
        Ok(image) => image,
        Err(e) => return verdict(vec![e.to_string()], None, member.code_for(&e)),
    };
    match image::verify_image(&image) {
        Ok(report) => {
            let mut problems = member.manifest_problems(&image);
            problems.extend(report.problems());
            let mut code = if problems.is_empty() { exit::OK } else { exit::DAMAGED };
            let mut disks = Vec::new();
            for (capture, chain) in disk_chains(&member.path, image.info().ok().flatten(), key) {
                match chain.and_then(|chain| disk::verify(&chain)) {
                    Ok(report) if report.is_intact() => disks.push(report),
                    Ok(report) => {
                        problems.extend(report.problems());
                        code = exit::DAMAGED;
                        disks.push(report);
                    }
                    Err(e) => {
                        problems.push(format!("disk {}: {e}", capture.device));
                        code = code.max(if e.is_damage() || missing(&e) { exit::DAMAGED } else { exit::FAILURE });
                    }
                }
            }
            Verdict { disks, ..verdict(problems, Some(report), code) }
        }
        Err(e) => verdict(vec![e.to_string()], None, member.code_for(&e)),
    }
}

fn run_verify(path: &Path, key: Option<&ImageKey>, json: bool) -> Result<(), CommandFailure> {
    let target = target(path, key)?;
    if !json {
        print_checkpoint_header(&target);
    }
    let mut verdicts = Vec::new();
    for member in &target.images {
        let verdict = verify_member(member, key);
        if !json {
            print_verdict(member, &verdict);
        }
        verdicts.push(verdict);
    }
    let code = worst(verdicts.iter().map(|v| v.code));
    if json {
        let doc = json!({ "checkpoint": checkpoint_json(&target), "intact": code == exit::OK, "images": verdicts });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
    }
    let bad = verdicts.iter().filter(|v| !v.intact).count();
    match (code, &target.checkpoint) {
        (exit::OK, _) => Ok(()),
        (_, Some((dir, m))) => Err(CommandFailure {
            code,
            message: format!(
                "checkpoint {} generation {} is not intact: {bad} of {} images failed verification",
                dir.display(),
                m.generation,
                verdicts.len()
            ),
        }),
        (_, None) => Err(CommandFailure { code, message: format!("image {} is not intact", path.display()) }),
    }
}

fn print_verdict(member: &Member, v: &Verdict) {
    match (&v.report, v.intact) {
        (Some(r), true) => {
            let clusters: u64 = v.disks.iter().flat_map(|d| &d.layers).map(|l| l.clusters_checked).sum();
            let disks = match v.disks.len() {
                0 => String::new(),
                n => format!(", {n} disk{} ({clusters} clusters)", if n == 1 { "" } else { "s" }),
            };
            println!(
                "{}: OK ({} pages, {} sections{disks} checked)",
                member.label(),
                r.pages_checked,
                r.sections_checked
            )
        }
        (_, true) => println!("{}: OK", member.label()),
        (_, false) => {
            println!("{}: {}", member.label(), if v.code == exit::DAMAGED { "DAMAGED" } else { "FAILED" });
            for p in &v.problems {
                println!("  {p}");
            }
        }
    }
}

// ---- disks ----

/// The disks the image at `path` captured (from its INFO, `info`), each
/// with its layer chain opened (under `key`, when given).
fn disk_chains(
    path: &Path,
    info: Option<serde_json::Value>,
    key: Option<&ImageKey>,
) -> Vec<(DiskCapture, disk::Result<Chain>)> {
    let captured = DiskCapture::listed_in(info).unwrap_or_default();
    captured
        .into_iter()
        .map(|capture| {
            let chain = match capture.chain_start(path) {
                Some((root, name)) => Chain::open(&root, &name, key),
                None => {
                    Err(DiskError::BadLayout { path: path.to_owned(), why: "not in a checkpoint directory".into() })
                }
            };
            (capture, chain)
        })
        .collect()
}

/// A layer a chain names that is not there: the checkpoint is damaged.
fn missing(e: &DiskError) -> bool {
    matches!(e, DiskError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

fn print_disks(path: &Path, info: Option<serde_json::Value>) {
    for (capture, chain) in disk_chains(path, info, None) {
        println!(
            "  disk {} ({}, {}, node {}): {} layer {}",
            capture.device,
            capture.format,
            size(capture.size),
            capture.node,
            capture.kind,
            capture.layer
        );
        match chain {
            Ok(chain) => {
                let i = disk::inspect(&chain);
                println!(
                    "    chain of {} layer{}: {} stored; the disk reads {} of data, {} of zeros",
                    i.layers.len(),
                    if i.layers.len() == 1 { "" } else { "s" },
                    size(i.stored_bytes),
                    size(i.data_bytes),
                    size(i.zero_bytes)
                );
                for (layer, l) in chain.layers().iter().zip(&i.layers) {
                    println!(
                        "      {:40}  {:5}  {:>10} data  {:>10} stored",
                        layer.name,
                        l.layer.name(),
                        size(l.data_bytes),
                        size(l.stored_bytes)
                    );
                }
            }
            Err(e) => println!("    cannot be read: {e}"),
        }
    }
}

// ---- formatting ----

/// `1.5 GiB`, `8 KiB`, `310 B`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `2024-05-01 12:34:56.789 UTC` from nanoseconds since the epoch.
fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns / 1_000_000) % 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01, counting in
/// 400-year eras that start on March 1st (so leap days end a year).
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    const DAYS_PER_ERA: u64 = 146_097;
    // Days from 0000-03-01 to 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days / DAYS_PER_ERA;
    let day_of_era = days % DAYS_PER_ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(1_700_000_000_123_456_789), "2023-11-14 22:13:20.123 UTC");
        assert_eq!(utc(4_107_542_399_000_000_000), "2100-02-28 23:59:59.000 UTC");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(310), "310 B");
        assert_eq!(size(8192), "8 KiB");
        assert_eq!(size(3 << 20), "3 MiB");
        assert_eq!(size((3 << 30) / 2), "1.5 GiB");
    }

    #[test]
    fn damage_outranks_other_failures() {
        assert_eq!(worst([]), exit::OK);
        assert_eq!(worst([exit::OK, exit::FAILURE, exit::OK]), exit::FAILURE);
        assert_eq!(worst([exit::FAILURE, exit::DAMAGED, exit::OK]), exit::DAMAGED);
    }
}
