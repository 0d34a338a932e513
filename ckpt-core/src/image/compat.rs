// SPDX-License-Identifier: GPL-2.0-or-later
//! Whether an image can be restored into a running VM: same VM name,
//! machine type and RAM blocks. Block order does not matter: blocks are
//! matched by name, and [`Compatible::image_block`] is the one mapping a
//! restore uses (two equal-size NUMA nodes listed in another order on the
//! restore's command line must not trade RAM); a different QEMU version is tolerated when the
//! machine type is the same, since the machine type is what fixes the
//! device state's layout.

use std::fmt;

use super::layout::Identity;

/// One way an image and a running VM differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The VMs' `-name`s differ (empty when unnamed).
    VmName {
        /// The image's VM name.
        image: String,
        /// The running VM's.
        running: String,
    },
    /// The machine types differ: the device state would not load.
    Machine {
        /// The image's machine type, e.g. `pc-i440fx-10.0`.
        image: String,
        /// The running VM's.
        running: String,
    },
    /// A block in the image that the running VM does not have.
    BlockMissing {
        /// The block's name.
        name: String,
        /// Its length in the image, bytes.
        length: u64,
    },
    /// A block in the running VM that the image does not have.
    BlockExtra {
        /// The block's name.
        name: String,
        /// Its length in the running VM, bytes.
        length: u64,
    },
    /// A block both have, of different lengths.
    BlockSize {
        /// The block's name.
        name: String,
        /// Its length in the image, bytes.
        image: u64,
        /// Its length in the running VM, bytes.
        running: u64,
    },
    /// A block name the image holds twice (QEMU's names are unique).
    BlockTwice {
        /// The repeated name.
        name: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::VmName { image, running } => {
                write!(f, "VM name differs (image: {}, running VM: {})", shown(image), shown(running))
            }
            Difference::Machine { image, running } => {
                write!(f, "machine type differs (image: {image}, running VM: {running})")
            }
            Difference::BlockMissing { name, length } => {
                write!(f, "RAM block {name} ({}) is in the image but missing in the running VM", size(*length))
            }
            Difference::BlockExtra { name, length } => {
                write!(f, "RAM block {name} ({}) of the running VM is not in the image", size(*length))
            }
            Difference::BlockSize { name, image, running } => {
                write!(f, "RAM block {name} is {} in the image but {} in the running VM", size(*image), size(*running))
            }
            Difference::BlockTwice { name } => write!(f, "RAM block {name} is in the image twice"),
        }
    }
}

/// The image cannot be restored into the running VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Mismatch {
    /// Every difference found, never empty: VM name, machine, then blocks
    /// in the image's order, then the running VM's extra blocks.
    pub differences: Vec<Difference>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the image does not match the running VM: ")?;
        for (i, d) in self.differences.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The image can be restored; `warnings` says what differs harmlessly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compatible {
    /// Harmless differences, worded for the log: another QEMU version with
    /// the same machine type, a block backed by pages of another size.
    pub warnings: Vec<String>,
    /// For each RAM block of the running VM, in its order, the index of
    /// the image's block of the same name (and length).
    pub image_block: Vec<usize>,
}

/// Compares the identity recorded in an image with the running VM's.
pub fn check_compatible(image: &Identity, running: &Identity) -> Result<Compatible, Mismatch> {
    let mut differences = Vec::new();
    let mut warnings = Vec::new();
    if image.vm_name != running.vm_name {
        differences.push(Difference::VmName { image: image.vm_name.clone(), running: running.vm_name.clone() });
    }
    if image.machine != running.machine {
        differences.push(Difference::Machine { image: image.machine.clone(), running: running.machine.clone() });
    } else if image.qemu_version != running.qemu_version {
        warnings.push(format!(
            "QEMU version differs (image: {}, running VM: {}); the machine type {} is the same",
            image.qemu_version, running.qemu_version, image.machine
        ));
    }
    for (i, block) in image.ram_blocks.iter().enumerate() {
        if image.ram_blocks[..i].iter().any(|b| b.name == block.name) {
            differences.push(Difference::BlockTwice { name: block.name.clone() });
        }
        match running.ram_blocks.iter().find(|r| r.name == block.name) {
            None => differences.push(Difference::BlockMissing { name: block.name.clone(), length: block.length }),
            Some(r) if r.length != block.length => differences.push(Difference::BlockSize {
                name: block.name.clone(),
                image: block.length,
                running: r.length,
            }),
            Some(r) if r.page_size != block.page_size => warnings.push(format!(
                "RAM block {} was backed by {} pages and now by {} pages",
                block.name,
                size(block.page_size),
                size(r.page_size)
            )),
            Some(_) => {}
        }
    }
    for r in &running.ram_blocks {
        if !image.ram_blocks.iter().any(|b| b.name == r.name) {
            differences.push(Difference::BlockExtra { name: r.name.clone(), length: r.length });
        }
    }
    if differences.is_empty() {
        let image_block = running
            .ram_blocks
            .iter()
            .map(|r| image.ram_blocks.iter().position(|b| b.name == r.name).expect("every block is in the image"))
            .collect();
        Ok(Compatible { warnings, image_block })
    } else {
        Err(Mismatch { differences })
    }
}

fn shown(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed)"
    } else {
        name
    }
}

/// `1 GiB`, `640 KiB`, or plain bytes when not a whole unit.
fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes / unit * unit == bytes {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layout::RamBlock;

    fn vm(name: &str, machine: &str, qemu: &str, blocks: &[(&str, u64)]) -> Identity {
        Identity {
            vm_name: name.into(),
            machine: machine.into(),
            qemu_version: qemu.into(),
            ram_blocks: blocks
                .iter()
                .map(|&(n, length)| RamBlock { name: n.into(), length, page_size: 4096 })
                .collect(),
        }
    }

    const PC: &str = "pc-i440fx-10.0";

    #[test]
    fn identical_vms_are_compatible() {
        let a = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30), ("vga.vram", 16 << 20)]);
        assert_eq!(check_compatible(&a, &a), Ok(Compatible { warnings: vec![], image_block: vec![0, 1] }));
    }

    #[test]
    fn block_order_does_not_matter() {
        let a = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30), ("vga.vram", 16 << 20)]);
        let b = vm("node1", PC, "10.0.2", &[("vga.vram", 16 << 20), ("pc.ram", 1 << 30)]);
        assert_eq!(check_compatible(&a, &b).unwrap().image_block, [1, 0]);
    }

    #[test]
    fn equal_size_blocks_in_another_order_map_by_name() {
        // Two NUMA nodes' memory backends, listed the other way round on
        // the restore's command line: same sizes, other positions.
        let a =
            vm("node1", PC, "10.0.2", &[("/objects/m0", 1 << 30), ("/objects/m1", 1 << 30), ("pc.bios", 256 << 10)]);
        let b =
            vm("node1", PC, "10.0.2", &[("/objects/m1", 1 << 30), ("/objects/m0", 1 << 30), ("pc.bios", 256 << 10)]);
        assert_eq!(check_compatible(&a, &b).unwrap().image_block, [1, 0, 2]);
    }

    #[test]
    fn a_block_twice_in_the_image_is_refused() {
        let a = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30), ("pc.ram", 1 << 30)]);
        let b = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30)]);
        let err = check_compatible(&a, &b).unwrap_err();
        assert_eq!(err.differences, vec![Difference::BlockTwice { name: "pc.ram".into() }]);
    }

    #[test]
    fn another_qemu_with_the_same_machine_is_a_warning() {
        let a = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30)]);
        let b = vm("node1", PC, "10.0.3", &[("pc.ram", 1 << 30)]);
        let ok = check_compatible(&a, &b).unwrap();
        assert_eq!(ok.warnings.len(), 1);
        assert!(ok.warnings[0].contains("10.0.2") && ok.warnings[0].contains("10.0.3"), "{:?}", ok.warnings);
    }

    #[test]
    fn every_difference_is_named() {
        let a = vm("node1", PC, "10.0.2", &[("pc.ram", 1 << 30), ("vga.vram", 16 << 20)]);
        let b = vm("node2", "pc-q35-10.0", "10.1.0", &[("pc.ram", 2 << 30), ("pc.bios", 256 << 10)]);
        let err = check_compatible(&a, &b).unwrap_err();
        assert_eq!(
            err.differences,
            vec![
                Difference::VmName { image: "node1".into(), running: "node2".into() },
                Difference::Machine { image: PC.into(), running: "pc-q35-10.0".into() },
                Difference::BlockSize { name: "pc.ram".into(), image: 1 << 30, running: 2 << 30 },
                Difference::BlockMissing { name: "vga.vram".into(), length: 16 << 20 },
                Difference::BlockExtra { name: "pc.bios".into(), length: 256 << 10 },
            ]
        );
        let message = err.to_string();
        for expected in [
            "VM name differs (image: node1, running VM: node2)",
            "machine type differs (image: pc-i440fx-10.0, running VM: pc-q35-10.0)",
            "RAM block pc.ram is 1 GiB in the image but 2 GiB in the running VM",
            "RAM block vga.vram (16 MiB) is in the image but missing in the running VM",
            "RAM block pc.bios (256 KiB) of the running VM is not in the image",
        ] {
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn unnamed_vms_say_so() {
        let a = vm("", PC, "10.0.2", &[]);
        let b = vm("node1", PC, "10.0.2", &[]);
        let message = check_compatible(&a, &b).unwrap_err().to_string();
        assert!(message.contains("image: (unnamed), running VM: node1"), "{message}");
    }
}
