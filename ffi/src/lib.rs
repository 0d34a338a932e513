// SPDX-License-Identifier: GPL-2.0-or-later
//! The mekha library that the patched QEMU links.
//!
//! QEMU calls the `mekha_*` functions declared in `include/mekha.h`; this
//! crate calls back through the `mekha_qemu_*` functions of the same header.
//! Every policy decision lives here; QEMU's side is a thin glue file.
//!
//! Every exported function catches panics: a bug in mekha fails the QMP
//! command that hit it, it never takes the running VM down.

mod boundary;
mod checkpoint;
mod disks;
mod fault;
mod guest_ram;
mod guest_time;
mod info;
mod net_cut;
pub use net_cut::mekha_net_frame;
mod net_hold;
mod qemu;
mod qmp;
mod rendezvous;
mod restore;

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use boundary::MekhaStatus;
use mekha_ckpt_core::session;

/// See `mekha_abi_version` in include/mekha.h.
///
/// # Safety
/// None needed; `unsafe` only to match the other exports' declared type.
#[no_mangle]
pub unsafe extern "C" fn mekha_abi_version() -> u32 {
    boundary::MEKHA_ABI_VERSION
}

/// See `mekha_qmp_command` in include/mekha.h.
///
/// # Safety
/// `name` and `args_json` are valid NUL-terminated strings, `reply` is a
/// valid pointer to write to.
#[no_mangle]
pub unsafe extern "C" fn mekha_qmp_command(
    name: *const c_char,
    args_json: *const c_char,
    reply: *mut *mut c_char,
) -> MekhaStatus {
    let outcome = guarded(|| {
        // SAFETY: the caller passes valid C strings (see the header).
        let (name, args) = unsafe { (CStr::from_ptr(name), CStr::from_ptr(args_json)) };
        let (name, args) = (name.to_string_lossy(), args.to_string_lossy());
        qmp::dispatch(&name, &args)
    });
    let (status, text) = match outcome {
        Ok(json) => (MekhaStatus::MEKHA_OK, json),
        // QMP's error classes are QEMU's: the kind stays in the status
        // infos, the command's error is its message.
        Err(e) => (MekhaStatus::MEKHA_ERROR, e.message),
    };
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { *reply = into_c_string(text) };
    status
}

/// See `mekha_vm_run_state` in include/mekha.h.
///
/// # Safety
/// Called by QEMU from the main loop with the BQL held.
#[no_mangle]
pub unsafe extern "C" fn mekha_vm_run_state(running: bool) {
    let hooks: [fn(bool); 2] = [guest_time::on_run_state, net_hold::on_run_state];
    for hook in hooks {
        if let Err(panic) = catch_unwind(|| hook(running)) {
            crate::qemu::report::error(&format!("internal error in the run-state hook: {}", panic_message(&panic)));
        }
    }
}

/// See `mekha_machine_ready` in include/mekha.h.
///
/// # Safety
/// Called by QEMU once, from the main loop with the BQL held.
#[no_mangle]
pub unsafe extern "C" fn mekha_machine_ready() {
    // SAFETY: the caller holds the BQL.
    let bql = unsafe { qemu::Bql::assume_held() };
    if let Err(panic) = catch_unwind(|| net_hold::on_machine_ready(&bql)) {
        crate::qemu::report::error(&format!("internal error when the machine was built: {}", panic_message(&panic)));
    }
}

/// See `mekha_string_free` in include/mekha.h.
///
/// # Safety
/// `s` is NULL or a string returned by this library, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mekha_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from CString::into_raw in into_c_string.
        drop(unsafe { CString::from_raw(s) });
    }
}

fn into_c_string(text: String) -> *mut c_char {
    // Interior NULs cannot occur in JSON or in our messages; replace them
    // rather than fail, so that the caller always gets a string.
    let text = text.replace('\0', "\u{fffd}");
    CString::new(text).expect("NULs were replaced").into_raw()
}

/// Runs `f`; a panic (a bug in mekha) becomes its error, so that what it
/// served (a QMP command, a checkpoint, a restore) fails instead of never
/// ending.
pub(crate) fn guarded<T>(f: impl FnOnce() -> session::Result<T>) -> session::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(session::Error::internal(format!("mekha: internal error: {}", panic_message(&panic))))
    })
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}
