// SPDX-License-Identifier: GPL-2.0-or-later
//! The firmware and option ROMs a VM's QEMU will load, looked for before
//! any VM of a spec starts: a missing file is named with the Debian
//! package that brings it, instead of one QEMU failing after its peers
//! started.
//!
//! What QEMU loads follows from its command line: the machine's BIOS
//! (`bios-256k.bin` for pc and q35, or `-bios`), the Linux boot ROM for
//! `-kernel` with a bzImage, the option ROM of each PCI NIC and display
//! (unless `romfile=` names another or none), and those of the NIC and
//! display a machine adds by default. QEMU takes a file name as a path
//! first, then looks in its data directories (`-L` ones first, then its
//! firmware path), which `qemu -L help` lists. Files whose need depends on
//! more than the command line (`kvmvapic.bin`) are left to QEMU:
//! [`explain_start_failure`] names their package when QEMU stops on one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The machine families whose defaults (BIOS, NIC, display) are known here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Machine {
    /// i440FX (`pc`, `pc-i440fx-*`), x86_64's default machine.
    Pc,
    /// Q35 (`q35`, `pc-q35-*`).
    Q35,
    /// Any other (microvm, isapc, none): only what the command line names.
    Other,
}

impl Machine {
    fn of(name: &str) -> Machine {
        if name == "q35" || name.starts_with("pc-q35") {
            Machine::Q35
        } else if name == "pc" || name.starts_with("pc-i440fx") {
            Machine::Pc
        } else {
            Machine::Other
        }
    }

    fn default_nic(self) -> Option<&'static str> {
        match self {
            Machine::Pc => Some("e1000"),
            Machine::Q35 => Some("e1000e"),
            Machine::Other => None,
        }
    }
}

/// The option ROM QEMU gives a PCI device of this driver by default.
fn default_romfile(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "virtio-net-pci" | "virtio-net-pci-transitional" | "virtio-net-pci-non-transitional" => "efi-virtio.rom",
        "e1000" | "e1000-82544gc" | "e1000-82545em" => "efi-e1000.rom",
        "e1000e" => "efi-e1000e.rom",
        "rtl8139" => "efi-rtl8139.rom",
        "ne2k_pci" => "efi-ne2k_pci.rom",
        "pcnet" => "efi-pcnet.rom",
        "vmxnet3" => "efi-vmxnet3.rom",
        "i82550" | "i82551" | "i82557a" | "i82557b" | "i82557c" | "i82558a" | "i82558b" | "i82559a" | "i82559b"
        | "i82559c" | "i82559er" | "i82562" | "i82801" => "pxe-eepro100.rom",
        "VGA" => "vgabios-stdvga.bin",
        "cirrus-vga" => "vgabios-cirrus.bin",
        "qxl-vga" => "vgabios-qxl.bin",
        "virtio-vga" => "vgabios-virtio.bin",
        "vmware-svga" => "vgabios-vmware.bin",
        "ati-vga" => "vgabios-ati.bin",
        "bochs-display" => "vgabios-bochs-display.bin",
        _ => return None,
    })
}

/// Drivers whose presence on the command line replaces the default
/// display (QEMU's own list).
const DISPLAY_DRIVERS: [&str; 11] = [
    "VGA",
    "isa-vga",
    "cirrus-vga",
    "isa-cirrus-vga",
    "vmware-svga",
    "qxl-vga",
    "virtio-vga",
    "ati-vga",
    "vhost-user-vga",
    "virtio-vga-gl",
    "virtio-vga-rutabaga",
];

/// The PCI display device of a `-vga` model.
fn vga_driver(model: &str) -> Option<&'static str> {
    Some(match model {
        "std" => "VGA",
        "cirrus" => "cirrus-vga",
        "vmware" => "vmware-svga",
        "qxl" => "qxl-vga",
        "virtio" => "virtio-vga",
        _ => return None,
    })
}

/// The PCI NIC of a `-nic`/`-net nic` model (`virtio` is QEMU's short name).
fn nic_driver(model: &str) -> &str {
    if model == "virtio" {
        "virtio-net-pci"
    } else {
        model
    }
}

/// A file QEMU will load, and what for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Needed {
    pub file: String,
    pub purpose: String,
}

/// The `key=value` list of an option value, QEMU's way: `,,` is a comma;
/// a first element without `=` is the value of `implied_key`.
fn keyval(value: &str, implied_key: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let mut item = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                item.push(',');
            }
            ',' => parts.push(std::mem::take(&mut item)),
            c => item.push(c),
        }
    }
    parts.push(item);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| match part.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None if i == 0 => (implied_key.to_owned(), part),
            None => (part, "on".to_owned()),
        })
        .collect()
}

fn get<'a>(items: &'a [(String, String)], key: &str) -> Option<&'a str> {
    items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A `-device` value: its driver and its `romfile`, if set (`Some("")`:
/// no ROM). Both QEMU's syntaxes: `DRIVER,key=value` and JSON.
fn device(value: &str) -> Option<(String, Option<String>)> {
    if value.trim_start().starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(value).ok()?;
        let driver = json.get("driver")?.as_str()?.to_owned();
        let romfile = json.get("romfile").and_then(|r| r.as_str()).map(str::to_owned);
        return Some((driver, romfile));
    }
    let items = keyval(value, "driver");
    Some((get(&items, "driver")?.to_owned(), get(&items, "romfile").map(str::to_owned)))
}

/// The files QEMU will load for a VM started with `args`. `kernel_is_bzimage`
/// tells whether a `-kernel` file is a Linux bzImage (the Linux boot ROM's
/// case; other kernels take other loaders).
pub fn needed(args: &[String], kernel_is_bzimage: impl Fn(&Path) -> bool) -> Vec<Needed> {
    let mut machine = "pc".to_owned();
    let mut firmware: Option<String> = None;
    let (mut defaults, mut default_nic, mut default_vga) = (true, true, true);
    let mut nics: Vec<String> = Vec::new();
    let mut devices: Vec<(String, Option<String>)> = Vec::new();
    let mut vga: Option<String> = None;
    let mut kernel: Option<String> = None;
    // `-global DRIVER.romfile=FILE`: every such device's ROM.
    let mut global_romfile: Vec<(String, String)> = Vec::new();
    // Firmware from flash (UEFI): no BIOS file is loaded.
    let mut pflash = false;
    let mut args = args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        let Some(option) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else { continue };
        // The options read here, and -append, whose value may start with '-'.
        let takes_value =
            ["device", "nic", "net", "netdev", "vga", "bios", "kernel", "machine", "M", "global", "drive", "append"];
        if !takes_value.contains(&option) {
            if option == "nodefaults" {
                defaults = false;
            }
            continue;
        }
        let Some(value) = args.next() else { break };
        match option {
            "device" => {
                if let Some(d) = device(value) {
                    if DISPLAY_DRIVERS.contains(&d.0.as_str()) {
                        default_vga = false;
                    }
                    devices.push(d);
                }
            }
            "global" => {
                // DRIVER.PROPERTY=VALUE, or driver=,property=,value=.
                let (driver, property, setting) = match value.split_once('.') {
                    Some((driver, rest)) if !value.starts_with("driver=") => {
                        let (property, setting) = rest.split_once('=').unwrap_or((rest, ""));
                        (driver.to_owned(), property.to_owned(), setting.to_owned())
                    }
                    _ => {
                        let items = keyval(value, "driver");
                        let field = |k| get(&items, k).unwrap_or("").to_owned();
                        (field("driver"), field("property"), field("value"))
                    }
                };
                // QEMU: a -global for a display driver replaces the default display.
                if DISPLAY_DRIVERS.contains(&driver.as_str()) {
                    default_vga = false;
                }
                if property == "romfile" {
                    global_romfile.push((driver, setting));
                }
            }
            "drive" => pflash |= get(&keyval(value, "file"), "if") == Some("pflash"),
            "netdev" => default_nic = false,
            "nic" | "net" => {
                default_nic = false;
                let items = keyval(value, "type");
                let nic = match option {
                    "nic" => get(&items, "type") != Some("none"),
                    _ => get(&items, "type") == Some("nic"),
                };
                if nic {
                    nics.push(get(&items, "model").unwrap_or("").to_owned());
                }
            }
            "vga" => {
                default_vga = false;
                vga = Some(value.to_owned());
            }
            "bios" => firmware = Some(value.to_owned()),
            "kernel" => kernel = Some(value.to_owned()),
            "machine" | "M" => {
                let items = keyval(value, "type");
                if let Some(t) = get(&items, "type") {
                    machine = t.to_owned();
                }
                if let Some(f) = get(&items, "firmware") {
                    firmware = Some(f.to_owned());
                }
                pflash |= get(&items, "pflash0").is_some();
            }
            _ => {}
        }
    }
    let machine = Machine::of(&machine);
    let mut out = BTreeSet::new();
    let mut need = |file: &str, purpose: String| {
        if !file.is_empty() {
            out.insert(Needed { file: file.to_owned(), purpose });
        }
    };
    match (&firmware, machine) {
        (Some(f), _) => need(f, "the firmware (-bios)".into()),
        (None, Machine::Pc | Machine::Q35) if !pflash => need("bios-256k.bin", "the machine's BIOS (SeaBIOS)".into()),
        (None, _) => {}
    }
    // What QEMU gives a device of `driver` whose own romfile is `own`.
    let romfile = |driver: &str, own: Option<&String>| -> Option<String> {
        own.cloned()
            .or_else(|| global_romfile.iter().rev().find(|(d, _)| d == driver).map(|(_, f)| f.clone()))
            .or_else(|| default_romfile(driver).map(str::to_owned))
    };
    if let Some(k) = &kernel {
        if machine != Machine::Other && kernel_is_bzimage(Path::new(k)) {
            need("linuxboot_dma.bin", "the Linux boot ROM of -kernel".into());
        }
    }
    for (driver, own) in &devices {
        if let Some(f) = romfile(driver, own.as_ref()) {
            need(&f, format!("the option ROM of a {driver} device"));
        }
    }
    for model in &nics {
        let driver = if model.is_empty() { machine.default_nic().unwrap_or("") } else { nic_driver(model) };
        if let Some(f) = romfile(driver, None) {
            need(&f, format!("the option ROM of a {driver} NIC (-nic/-net)"));
        }
    }
    if machine != Machine::Other {
        let (vga, how) = match (&vga, defaults && default_vga) {
            (Some(model), _) => (vga_driver(model), "-vga"),
            (None, true) => (Some("VGA"), "the machine's default display"),
            (None, false) => (None, ""),
        };
        if let Some(f) = vga.and_then(|d| romfile(d, None)) {
            need(&f, format!("the VGA BIOS of {how}"));
        }
        if defaults && default_nic {
            if let Some(f) = machine.default_nic().and_then(|d| romfile(d, None)) {
                need(&f, "the option ROM of the machine's default NIC".into());
            }
        }
    }
    out.into_iter().collect()
}

/// Whether `path` is a Linux bzImage (the "HdrS" magic of its boot header).
pub fn is_bzimage(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::Start(0x202)).and_then(|_| f.read_exact(&mut magic)))
        .is_ok_and(|()| &magic == b"HdrS")
}

/// QEMU's data directories as `qemu -L help` lists them (its firmware path
/// and the directory beside its binary).
pub fn data_dirs(qemu: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new(qemu)
        .args(["-L", "help"])
        .output()
        .map_err(|e| format!("running {} -L help: {e}", qemu.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -L help failed ({}): {}",
            qemu.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect())
}

/// The Debian package that brings a firmware file of this name.
pub fn package_of(file: &str) -> Option<&'static str> {
    if file.contains('/') {
        return None;
    }
    Some(if file.starts_with("efi-") || file.starts_with("pxe-") {
        "ipxe-qemu"
    } else if file.starts_with("bios") || file.starts_with("vgabios") {
        "seabios"
    } else if file.starts_with("OVMF") {
        "ovmf"
    } else {
        "qemu-system-data"
    })
}

/// Where QEMU finds `file`: as a path, else in `-L` dirs of `args`, else in
/// `dirs`.
fn find(file: &str, args: &[String], dirs: &[PathBuf]) -> Option<PathBuf> {
    if Path::new(file).is_file() {
        return Some(PathBuf::from(file));
    }
    let own = args.windows(2).filter(|w| w[0] == "-L" || w[0] == "--L").map(|w| PathBuf::from(&w[1]));
    own.chain(dirs.iter().cloned()).map(|d| d.join(file)).find(|p| p.is_file())
}

/// Checks that `qemu` finds every file a VM named `vm` with `args` needs;
/// the error names each missing file, what it is for, and its package.
pub fn check(qemu: &Path, dirs: &[PathBuf], vm: &str, args: &[String]) -> Result<(), String> {
    let missing: Vec<String> = needed(args, is_bzimage)
        .into_iter()
        .filter(|n| find(&n.file, args, dirs).is_none())
        .map(|n| match package_of(&n.file) {
            Some(p) => format!("{} ({}; Debian's package {p})", n.file, n.purpose),
            None => format!("{} ({}: no such file)", n.file, n.purpose),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "VM {vm} cannot start: its QEMU ({}) finds no {} in {}; install the package named \
         (apt-get install), or give a NIC romfile= (empty for none)",
        qemu.display(),
        missing.join(", "),
        dirs.join(":")
    ))
}

/// What to install when QEMU's output shows it stopped on a missing
/// firmware file, if it did.
pub fn explain_start_failure(output: &str) -> Option<String> {
    let file = [("failed to find romfile \"", '"'), ("could not load PC BIOS '", '\''), ("rom: file ", ' ')]
        .iter()
        .find_map(|(start, end)| {
            let at = output.find(start)? + start.len();
            output[at..].split(*end).next().map(str::trim).filter(|f| !f.is_empty())
        })?;
    let package = package_of(file)?;
    Some(format!("{file} is in Debian's package {package} (apt-get install {package})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(args: &[&str]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        needed(&args, |_| true).into_iter().map(|n| n.file).collect()
    }

    #[test]
    fn a_bare_pc_needs_its_bios_default_display_and_default_nic() {
        assert_eq!(files(&[]), ["bios-256k.bin", "efi-e1000.rom", "vgabios-stdvga.bin"]);
        assert_eq!(files(&["-M", "q35"]), ["bios-256k.bin", "efi-e1000e.rom", "vgabios-stdvga.bin"]);
        assert_eq!(files(&["-machine", "type=pc-q35-10.0,accel=tcg"]), files(&["-M", "q35"]));
    }

    #[test]
    fn nodefaults_and_explicit_devices_decide() {
        assert_eq!(files(&["-nodefaults"]), ["bios-256k.bin"]);
        let spec_vm = [
            "-accel",
            "tcg",
            "-nodefaults",
            "-kernel",
            "/k",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01",
        ];
        assert_eq!(files(&spec_vm), ["bios-256k.bin", "efi-virtio.rom", "linuxboot_dma.bin"]);
        // romfile= names another ROM or, empty, none.
        assert_eq!(files(&["-nodefaults", "-device", "virtio-net-pci,romfile="]), ["bios-256k.bin"]);
        assert_eq!(files(&["-nodefaults", "-device", "e1000,romfile=/opt/my.rom"]), ["/opt/my.rom", "bios-256k.bin"]);
        // libvirt's JSON -device.
        assert_eq!(
            files(&["-nodefaults", "-device", r#"{"driver":"rtl8139","netdev":"n0","id":"net0"}"#]),
            ["bios-256k.bin", "efi-rtl8139.rom"]
        );
        assert_eq!(files(&["-nodefaults", "-bios", "/usr/share/ovmf/OVMF.fd"]), ["/usr/share/ovmf/OVMF.fd"]);
    }

    #[test]
    fn a_netdev_nic_or_vga_option_replaces_a_default() {
        // -netdev alone: no default NIC (and no NIC at all).
        assert_eq!(files(&["-netdev", "user,id=n0"]), ["bios-256k.bin", "vgabios-stdvga.bin"]);
        assert_eq!(files(&["-nic", "user,model=virtio", "-vga", "none"]), ["bios-256k.bin", "efi-virtio.rom"]);
        assert_eq!(files(&["-nic", "none", "-vga", "qxl"]), ["bios-256k.bin", "vgabios-qxl.bin"]);
        assert_eq!(
            files(&["-net", "nic", "-net", "user", "-M", "q35", "-vga", "none"]),
            ["bios-256k.bin", "efi-e1000e.rom"]
        );
        assert_eq!(files(&["-nic", "none", "-device", "virtio-vga"]), ["bios-256k.bin", "vgabios-virtio.bin"]);
        // A value that looks like an option is a value.
        assert_eq!(files(&["-nodefaults", "-append", "-device"]), ["bios-256k.bin"]);
    }

    #[test]
    fn globals_and_flash_firmware_are_heeded() {
        // The usual way to drop iPXE from every virtio NIC.
        let no_rom = ["-nodefaults", "-global", "virtio-net-pci.romfile=", "-device", "virtio-net-pci"];
        assert_eq!(files(&no_rom), ["bios-256k.bin"]);
        let other = ["-nodefaults", "-global", "driver=e1000,property=romfile,value=/opt/e.rom", "-device", "e1000"];
        assert_eq!(files(&other), ["/opt/e.rom", "bios-256k.bin"]);
        // UEFI from pflash: no BIOS file.
        let uefi = ["-nodefaults", "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"];
        assert_eq!(files(&uefi), Vec::<String>::new());
        assert_eq!(files(&["-nodefaults", "-M", "q35,pflash0=code"]), Vec::<String>::new());
    }

    #[test]
    fn other_machines_need_only_what_they_name() {
        assert_eq!(files(&["-M", "microvm"]), Vec::<String>::new());
        assert_eq!(files(&["-M", "microvm", "-device", "virtio-net-pci"]), ["efi-virtio.rom"]);
    }

    #[test]
    fn keyval_reads_qemus_syntax() {
        let kv = keyval("e1000,romfile=a,,b,rombar=0", "driver");
        assert_eq!(get(&kv, "driver"), Some("e1000"));
        assert_eq!(get(&kv, "romfile"), Some("a,b"));
        assert_eq!(get(&kv, "rombar"), Some("0"));
        assert_eq!(get(&keyval("x,romfile=", "driver"), "romfile"), Some(""));
        assert_eq!(keyval("", "type"), [("type".to_owned(), String::new())]);
    }

    #[test]
    fn packages_and_qemus_own_failures_are_named() {
        assert_eq!(package_of("efi-virtio.rom"), Some("ipxe-qemu"));
        assert_eq!(package_of("vgabios-stdvga.bin"), Some("seabios"));
        assert_eq!(package_of("bios-256k.bin"), Some("seabios"));
        assert_eq!(package_of("linuxboot_dma.bin"), Some("qemu-system-data"));
        assert_eq!(package_of("/opt/x.rom"), None);
        let out = "qemu-system-x86_64: -device virtio-net-pci,netdev=n: failed to find romfile \"efi-virtio.rom\"";
        assert_eq!(
            explain_start_failure(out).as_deref(),
            Some("efi-virtio.rom is in Debian's package ipxe-qemu (apt-get install ipxe-qemu)")
        );
        assert!(explain_start_failure("rom: file kvmvapic.bin         : error Failed to open")
            .unwrap()
            .contains("qemu-system-data"));
        assert!(explain_start_failure("qemu: could not load PC BIOS 'bios-256k.bin'").unwrap().contains("seabios"));
        assert_eq!(explain_start_failure("qemu: could not open disk"), None);
    }

    #[test]
    fn a_bzimage_is_told_by_its_header() {
        let dir = std::env::temp_dir().join(format!("mekha-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("bz"), &image).unwrap();
        std::fs::write(dir.join("elf"), b"\x7fELF").unwrap();
        assert!(is_bzimage(&dir.join("bz")));
        assert!(!is_bzimage(&dir.join("elf")));
        assert!(!is_bzimage(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
