// SPDX-License-Identifier: GPL-2.0-or-later
//! Safe wrappers over what QEMU offers the library (`mekha_qemu_*`).

use std::ffi::{c_int, c_void, CStr};

use crate::boundary::{self, MekhaRamBlock, MekhaVmIdentity};

/// A guest RAM block, copied out of QEMU.
#[derive(Debug, Clone)]
pub(crate) struct RamBlock {
    pub name: String,
    pub used_length: u64,
    pub max_length: u64,
    pub page_size: u64,
    pub shared: bool,
    pub file_backed: bool,
    pub migratable: bool,
}

/// The VM's RAM blocks, in QEMU's order.
pub(crate) fn ram_blocks() -> Vec<RamBlock> {
    unsafe extern "C" fn collect(block: *const MekhaRamBlock, opaque: *mut c_void) -> c_int {
        // SAFETY: QEMU passes a valid block for the duration of the call
        // and our own Vec as opaque.
        let (block, out) = unsafe { (&*block, &mut *(opaque as *mut Vec<RamBlock>)) };
        out.push(RamBlock {
            name: unsafe { c_str(block.name) }.unwrap_or_default(),
            used_length: block.used_length,
            max_length: block.max_length,
            page_size: block.page_size,
            shared: block.flags & boundary::MEKHA_RAM_SHARED != 0,
            file_backed: block.flags & boundary::MEKHA_RAM_FILE != 0,
            migratable: block.flags & boundary::MEKHA_RAM_MIGRATABLE != 0,
        });
        0
    }
    let mut blocks = Vec::new();
    // SAFETY: `collect` matches MekhaRamBlockFn and `blocks` outlives the walk.
    unsafe {
        boundary::mekha_qemu_foreach_ram_block(Some(collect), &mut blocks as *mut Vec<RamBlock> as *mut c_void);
    }
    blocks
}

/// What identifies this QEMU process and its VM.
#[derive(Debug, Clone)]
pub(crate) struct VmIdentity {
    pub qemu_version: String,
    pub vm_name: Option<String>,
    pub machine: String,
    pub accelerator: String,
}

pub(crate) fn vm_identity() -> VmIdentity {
    let mut id = MekhaVmIdentity {
        qemu_version: std::ptr::null(),
        vm_name: std::ptr::null(),
        machine: std::ptr::null(),
        accelerator: std::ptr::null(),
    };
    // SAFETY: QEMU fills the struct with strings that live as long as the process.
    unsafe {
        boundary::mekha_qemu_vm_identity(&mut id);
        VmIdentity {
            qemu_version: c_str(id.qemu_version).unwrap_or_default(),
            vm_name: c_str(id.vm_name),
            machine: c_str(id.machine).unwrap_or_default(),
            accelerator: c_str(id.accelerator).unwrap_or_default(),
        }
    }
}

/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn c_str(p: *const std::ffi::c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}
