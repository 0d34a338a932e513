// SPDX-License-Identifier: GPL-2.0-or-later
//! Safe wrappers over what QEMU offers the library (`mekha_qemu_*`).

use std::ffi::{c_int, c_void, CStr};

use crate::boundary::{self, MekhaRamBlock, MekhaVmIdentity};
use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::session::{Error, Result};

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
    /// Host address of the block's memory in this process.
    pub host: usize,
}

/// The VM's RAM blocks, in QEMU's order.
pub(crate) fn ram_blocks() -> Vec<RamBlock> {
    unsafe extern "C" fn collect(block: *const MekhaRamBlock, opaque: *mut c_void) -> c_int {
        // SAFETY: QEMU passes a valid block for the duration of the call
        // and our own Vec as opaque.
        let (block, out) = unsafe { (&*block, &mut *(opaque as *mut Vec<RamBlock>)) };
        // SAFETY: as above, the block's name with it.
        let name = unsafe { c_str(block.name) };
        out.push(RamBlock {
            name: name.unwrap_or_default(),
            used_length: block.used_length,
            max_length: block.max_length,
            page_size: block.page_size,
            shared: block.flags & boundary::MEKHA_RAM_SHARED != 0,
            file_backed: block.flags & boundary::MEKHA_RAM_FILE != 0,
            migratable: block.flags & boundary::MEKHA_RAM_MIGRATABLE != 0,
            host: block.host as usize,
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

/// A disk of the VM (`MekhaDisk`).
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub device: String,
    pub node: String,
    pub writable: bool,
    pub inserted: bool,
    /// The root node's driver (`qcow2`, `raw`, a filter's name).
    pub format: String,
    /// Virtual size in bytes; none if QEMU could not tell.
    pub size: Option<u64>,
    /// Another user may write it too (`share-rw`).
    pub shared_write: bool,
}

/// The VM's disks (block backends attached to devices).
pub(crate) fn disks(_bql: &Bql) -> Vec<Disk> {
    unsafe extern "C" fn collect(disk: *const boundary::MekhaDisk, opaque: *mut c_void) -> c_int {
        // SAFETY: QEMU passes a valid disk for the duration of the call
        // and our own Vec as opaque.
        let (disk, out) = unsafe { (&*disk, &mut *(opaque as *mut Vec<Disk>)) };
        // SAFETY: as above, the disk's strings with it.
        let (device, node, format) = unsafe { (c_str(disk.device), c_str(disk.node), c_str(disk.format)) };
        out.push(Disk {
            device: device.unwrap_or_default(),
            node: node.unwrap_or_default(),
            writable: disk.writable,
            inserted: disk.inserted,
            format: format.unwrap_or_default(),
            size: u64::try_from(disk.size).ok(),
            shared_write: disk.shared_write,
        });
        0
    }
    let mut disks = Vec::new();
    // SAFETY: `collect` matches MekhaDiskFn, `disks` outlives the walk, BQL held.
    unsafe { boundary::mekha_qemu_foreach_disk(Some(collect), &mut disks as *mut Vec<Disk> as *mut c_void) };
    disks
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
    // SAFETY: the caller's promise.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A QEMU error string (`char **err` out-parameters), taken over and freed.
///
/// # Safety
/// `err` is NULL or a string QEMU allocated (g_strdup) for the caller,
/// used by no one else.
unsafe fn take_error(err: *mut std::ffi::c_char) -> String {
    if err.is_null() {
        return "unknown error".to_owned();
    }
    // SAFETY: the caller's promise: a NUL-terminated string.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: QEMU's allocation, ours to free, unused from here on.
    unsafe { boundary::mekha_qemu_free(err as *mut c_void) };
    message
}

/// Runs a `char **err`-style QEMU call; Err carries QEMU's message.
fn check(call: impl FnOnce(*mut *mut std::ffi::c_char) -> c_int) -> Result<()> {
    let mut err = std::ptr::null_mut();
    if call(&mut err) < 0 {
        // SAFETY: a failed `char **err` call left NULL or its message there.
        Err(Error::qemu(unsafe { take_error(err) }))
    } else {
        Ok(())
    }
}

/// Registration of a library thread with QEMU's RCU, for its lifetime.
pub(crate) struct QemuThread(());

impl QemuThread {
    pub(crate) fn register() -> QemuThread {
        // SAFETY: called once per thread, undone on drop in the same thread.
        unsafe { boundary::mekha_qemu_thread_register() };
        QemuThread(())
    }
}

impl Drop for QemuThread {
    fn drop(&mut self) {
        // SAFETY: this thread registered in register().
        unsafe { boundary::mekha_qemu_thread_unregister() };
    }
}

/// Proof that this thread holds QEMU's big lock (BQL); releases it on drop
/// when this guard took it.
pub(crate) struct Bql {
    owned: bool,
}

impl Bql {
    /// Takes the BQL; never call from a thread that already holds it.
    pub(crate) fn lock() -> Bql {
        // SAFETY: paired with the unlock in drop.
        unsafe { boundary::mekha_qemu_bql_lock() };
        Bql { owned: true }
    }

    /// For code QEMU calls with the BQL held (QMP handlers, main-loop
    /// calls).
    ///
    /// # Safety
    /// The calling thread holds the BQL for the guard's lifetime.
    pub(crate) unsafe fn assume_held() -> Bql {
        Bql { owned: false }
    }
}

impl Drop for Bql {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: this guard took the lock.
            unsafe { boundary::mekha_qemu_bql_unlock() };
        }
    }
}

/// Runs `f` soon in QEMU's main loop, with the BQL held.
pub(crate) fn main_loop_call(f: impl FnOnce() + Send + 'static) {
    unsafe extern "C" fn trampoline(opaque: *mut c_void) {
        // SAFETY: opaque is the box leaked below, run exactly once.
        let f = unsafe { Box::from_raw(opaque as *mut Box<dyn FnOnce() + Send>) };
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            report::error(&format!("internal error in a main-loop call: {}", crate::panic_message(&panic)));
        }
    }
    let f: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
    // SAFETY: QEMU calls trampoline once with this pointer.
    unsafe { boundary::mekha_qemu_main_loop_call(Some(trampoline), Box::into_raw(f) as *mut c_void) };
}

/// QMP events mekha sends.
pub(crate) use boundary::MekhaEvent as Event;

/// Sends QMP event `event` with `data` (which must match its QAPI type).
pub(crate) fn emit_event(event: Event, data: &serde_json::Value) {
    let json = std::ffi::CString::new(data.to_string()).expect("JSON has no NUL");
    // SAFETY: valid C string for the duration of the call.
    unsafe { boundary::mekha_qemu_emit_event(event, json.as_ptr()) };
}

/// What the library has to say, through QEMU's own error reporting
/// (`error_report`: the program's prefix, `-msg timestamp=on`), never
/// straight to stderr.
/// The block layer: QMP commands run in-process, dirty bitmaps' extents,
/// writes through a disk's device (see `disks`).
pub(crate) mod block {
    use std::ffi::{c_int, c_void, CStr, CString};

    use mekha_ckpt_core::session::{Error, Result};
    use serde_json::{json, Value};

    use super::{boundary, check, Bql};

    fn c_string(what: &str, s: &str) -> Result<CString> {
        CString::new(s).map_err(|_| Error::invalid_argument(format!("{what} {s:?} holds a NUL byte")))
    }

    /// Runs QMP command `name` with `arguments` in-process, as a monitor
    /// would; its `return` value, or its error as a QEMU error. Never from
    /// inside a QMP handler (QEMU runs one command per thread at a time).
    pub(crate) fn execute(_bql: &Bql, name: &str, arguments: Value) -> Result<Value> {
        let request = c_string("QMP request", &json!({ "execute": name, "arguments": arguments }).to_string())?;
        // SAFETY: a NUL-terminated request; BQL held; the reply is QEMU's
        // allocation, copied then freed here.
        let reply = unsafe {
            let raw = boundary::mekha_qemu_qmp_execute(request.as_ptr());
            let text = CStr::from_ptr(raw).to_string_lossy().into_owned();
            boundary::mekha_qemu_free(raw as *mut c_void);
            text
        };
        let mut reply: Value = serde_json::from_str(&reply)
            .map_err(|e| Error::internal(format!("QEMU's reply to {name} is not JSON: {e}")))?;
        if let Some(error) = reply.get("error") {
            let desc = error.get("desc").and_then(Value::as_str).unwrap_or("no description");
            return Err(Error::qemu(format!("{name}: {desc}")));
        }
        Ok(reply.get_mut("return").map(Value::take).unwrap_or(Value::Null))
    }

    /// The dirty extents `(offset, len)` in bytes of `node`'s bitmap
    /// `bitmap`, in order.
    pub(crate) fn dirty_extents(_bql: &Bql, node: &str, bitmap: &str) -> Result<Vec<(u64, u64)>> {
        unsafe extern "C" fn collect(offset: i64, len: i64, opaque: *mut c_void) -> c_int {
            // SAFETY: our own Vec as opaque, for the duration of the walk.
            let out = unsafe { &mut *(opaque as *mut Vec<(u64, u64)>) };
            out.push((offset as u64, len as u64));
            0
        }
        let (node, bitmap) = (c_string("node", node)?, c_string("bitmap", bitmap)?);
        let mut extents: Vec<(u64, u64)> = Vec::new();
        let opaque = &mut extents as *mut Vec<(u64, u64)> as *mut c_void;
        // SAFETY: NUL-terminated names, `collect` matches MekhaExtentFn and
        // `extents` outlives the walk; BQL held.
        check(|err| unsafe {
            boundary::mekha_qemu_dirty_extents(node.as_ptr(), bitmap.as_ptr(), Some(collect), opaque, err)
        })?;
        Ok(extents)
    }

    /// Writes `data` at `offset` of `device`'s disk, or `len` zeroes when
    /// `data` is none, through the device's backend (disks active).
    pub(crate) fn disk_write(_bql: &Bql, device: &str, offset: u64, data: Option<&[u8]>, len: usize) -> Result<()> {
        let device = c_string("device", device)?;
        let ptr = data.map_or(std::ptr::null(), <[u8]>::as_ptr);
        let len = data.map_or(len, <[u8]>::len);
        // SAFETY: a NUL-terminated name and `len` readable bytes at `ptr`
        // (or NULL for zeroes); BQL held.
        check(|err| unsafe { boundary::mekha_qemu_disk_write(device.as_ptr(), offset, ptr, len, err) })
    }

    /// Drains `node` once: a job started on it in an iothread's context
    /// has then set itself up.
    pub(crate) fn settle(_bql: &Bql, node: &str) -> Result<()> {
        let node = c_string("node", node)?;
        // SAFETY: a NUL-terminated name; BQL held.
        check(|err| unsafe { boundary::mekha_qemu_disk_settle(node.as_ptr(), err) })
    }

    /// Activates an incoming VM's disks (taking their locks).
    pub(crate) fn activate(_bql: &Bql) -> Result<()> {
        // SAFETY: BQL held.
        check(|err| unsafe { boundary::mekha_qemu_disks_activate(err) })
    }
}

pub(crate) mod report {
    use super::boundary::{self, MekhaReport};

    fn report(level: MekhaReport, message: &str) {
        // A NUL inside would cut the message short; none is expected.
        let message = std::ffi::CString::new(message.replace('\0', " ")).expect("no NUL left");
        // SAFETY: a valid C string for the call; any thread may report.
        unsafe { boundary::mekha_qemu_report(level, message.as_ptr()) };
    }

    pub(crate) fn error(message: &str) {
        report(MekhaReport::MEKHA_REPORT_ERROR, message)
    }

    pub(crate) fn warn(message: &str) {
        report(MekhaReport::MEKHA_REPORT_WARNING, message)
    }
}

/// The image key held by QEMU's `secret` object `id`.
pub(crate) fn image_key(_bql: &Bql, id: &str) -> Result<ImageKey> {
    let c_id = std::ffi::CString::new(id)
        .map_err(|_| Error::invalid_argument(format!("key-secret {id:?} holds a NUL byte")))?;
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: BQL held; valid C string; QEMU fills data and len on success.
    check(|err| unsafe { boundary::mekha_qemu_secret_lookup(c_id.as_ptr(), &mut data, &mut len, err) })
        .map_err(|e| Error::invalid_argument(e.message))?;
    // SAFETY: on success, data points to len bytes QEMU allocated for us.
    let bytes = zeroize::Zeroizing::new(unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
    // SAFETY: the secret's copy is no longer used; wipe it before freeing.
    unsafe {
        std::ptr::write_bytes(data, 0, len);
        boundary::mekha_qemu_free(data as *mut c_void);
    }
    ImageKey::parse(&bytes).map_err(|e| Error::invalid_argument(format!("key-secret {id}: {e}")))
}

/// Checkpoint support in QEMU; every function wants the BQL (`_bql`).
pub(crate) mod ckpt {
    use super::*;

    pub(crate) fn begin(_bql: &Bql) -> Result<()> {
        // SAFETY: BQL held.
        check(|err| unsafe { boundary::mekha_qemu_checkpoint_begin(err) })
    }

    pub(crate) fn end(_bql: &Bql) {
        // SAFETY: BQL held, after a successful begin.
        unsafe { boundary::mekha_qemu_checkpoint_end() };
    }

    pub(crate) fn dirty_log_sync(_bql: &Bql) {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_dirty_log_sync() };
    }

    /// Fetches and clears block `name`'s dirty bits into `bitmap`.
    pub(crate) fn dirty_log_fetch(_bql: &Bql, name: &std::ffi::CStr, bitmap: &mut [u64], pages: u64) -> Result<()> {
        assert!(bitmap.len() as u64 >= pages.div_ceil(64));
        // SAFETY: BQL held; bitmap holds `pages` bits.
        let rc = unsafe { boundary::mekha_qemu_dirty_log_fetch(name.as_ptr(), bitmap.as_mut_ptr(), pages) };
        if rc < 0 {
            return Err(Error::qemu(format!(
                "RAM block {} changed size or vanished during the checkpoint",
                name.to_string_lossy()
            )));
        }
        Ok(())
    }

    pub(crate) fn vm_stop(_bql: &Bql) -> Result<()> {
        // SAFETY: BQL held.
        check(|err| unsafe { boundary::mekha_qemu_vm_stop(err) })
    }

    pub(crate) fn vm_start(_bql: &Bql) {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_vm_start() };
    }

    /// Whether the VM runs (someone may have resumed it while the BQL was
    /// free).
    pub(crate) fn vm_is_running(_bql: &Bql) -> bool {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_vm_is_running() }
    }

    /// Saves every device's state (VM stopped).
    pub(crate) fn save_devices(_bql: &Bql) -> Result<Vec<u8>> {
        unsafe extern "C" fn sink(data: *const u8, len: usize, opaque: *mut c_void) {
            // SAFETY: QEMU passes a buffer valid for the call; opaque is our Vec.
            unsafe { (*(opaque as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data, len)) };
        }
        let mut out = Vec::new();
        // SAFETY: BQL held; `out` outlives the call.
        check(|err| unsafe {
            boundary::mekha_qemu_save_devices(Some(sink), &mut out as *mut Vec<u8> as *mut c_void, err)
        })?;
        Ok(out)
    }
}

/// Incoming restore support; every function wants the BQL.
pub(crate) mod incoming {
    use super::*;

    pub(crate) fn pending(_bql: &Bql) -> bool {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_incoming_pending() }
    }

    pub(crate) fn load_devices(_bql: &Bql, state: &[u8]) -> Result<()> {
        // SAFETY: BQL held; state valid for the call.
        check(|err| unsafe { boundary::mekha_qemu_load_devices(state.as_ptr(), state.len(), err) })
    }

    pub(crate) fn finish(_bql: &Bql, start: bool) -> Result<()> {
        // SAFETY: BQL held.
        check(|err| unsafe { boundary::mekha_qemu_incoming_finish(start, err) })
    }

    /// Resumes a VM a restore left paused.
    pub(crate) fn resume(_bql: &Bql) -> Result<()> {
        // SAFETY: BQL held.
        check(|err| unsafe { boundary::mekha_qemu_vm_resume(err) })
    }

    /// Asks QEMU to shut down: a restored VM that must never run.
    pub(crate) fn shut_down(_bql: &Bql) {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_shutdown_request() }
    }
}

/// The hold filters on the NICs' netdevs; every function wants the BQL.
pub(crate) mod net {
    use super::*;
    use mekha_ckpt_core::image::{NetFrames, FRAME_RAW};
    use mekha_ckpt_core::netcut::Mac;

    /// A NIC's netdev.
    #[derive(Debug, Clone)]
    pub(crate) struct Netdev {
        pub id: String,
        /// Bytes of virtio-net header before each frame's Ethernet data.
        pub vnet_hdr_len: u32,
        /// The NIC's MAC address, as configured.
        pub mac: Mac,
        /// Why no hold filter is on it.
        pub error: Option<String>,
    }

    /// # Safety
    /// `n` is a netdev description QEMU passed, valid for the call.
    pub(crate) unsafe fn netdev(n: *const boundary::MekhaNetdev) -> Netdev {
        // SAFETY: QEMU passes a valid netdev description for the call.
        let n = unsafe { &*n };
        // SAFETY: its strings are QEMU's, valid for the call.
        let (id, error) = unsafe { (c_str(n.id), c_str(n.error)) };
        Netdev { id: id.unwrap_or_default(), vnet_hdr_len: n.vnet_hdr_len, mac: Mac(n.mac), error }
    }

    /// A NIC's netdev as the per-frame hook sees it: borrowed from QEMU
    /// for the call, nothing allocated.
    pub(crate) struct NetdevRef<'a> {
        pub id: &'a str,
        pub vnet_hdr_len: u32,
    }

    /// # Safety
    /// `n` is a netdev description QEMU passed, valid for `'a`.
    pub(crate) unsafe fn netdev_ref<'a>(n: *const boundary::MekhaNetdev) -> NetdevRef<'a> {
        // SAFETY: the caller's promise.
        let n = unsafe { &*n };
        // SAFETY: QEMU's netdev names are NUL-terminated and outlive the call.
        let id = if n.id.is_null() { "" } else { unsafe { CStr::from_ptr(n.id) }.to_str().unwrap_or("") };
        NetdevRef { id, vnet_hdr_len: n.vnet_hdr_len }
    }

    /// The flags of a frame QEMU passed, as the image records them.
    pub(crate) fn frame_flags(flags: u32) -> u32 {
        if flags & boundary::MEKHA_NET_FRAME_RAW != 0 {
            FRAME_RAW
        } else {
            0
        }
    }

    /// Attaches a hold filter to every NIC's netdev lacking one; describes
    /// every NIC's netdev.
    pub(crate) fn attach(_bql: &Bql) -> Vec<Netdev> {
        unsafe extern "C" fn collect(n: *const boundary::MekhaNetdev, opaque: *mut c_void) -> c_int {
            // SAFETY: opaque is our Vec; n is valid for the call.
            unsafe { (*(opaque as *mut Vec<Netdev>)).push(netdev(n)) };
            0
        }
        let mut out = Vec::new();
        // SAFETY: BQL held; `collect` matches MekhaNetdevFn and `out` outlives the walk.
        unsafe { boundary::mekha_qemu_net_hold_attach(Some(collect), &mut out as *mut Vec<Netdev> as *mut c_void) };
        out
    }

    /// Every hold filter holds, with at most `max_bytes` per netdev.
    pub(crate) fn hold_begin(_bql: &Bql, max_bytes: u64) {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_net_hold_begin(max_bytes) };
    }

    /// A copy of the frames the hold filters queue, per netdev, in order.
    pub(crate) fn held(_bql: &Bql) -> NetFrames {
        unsafe extern "C" fn collect(
            n: *const boundary::MekhaNetdev,
            flags: u32,
            data: *const u8,
            len: usize,
            opaque: *mut c_void,
        ) -> c_int {
            // SAFETY: QEMU passes valid data for the call; opaque is ours.
            let (frames, n, data) =
                unsafe { (&mut *(opaque as *mut NetFrames), netdev(n), std::slice::from_raw_parts(data, len)) };
            frames.push(&n.id, n.vnet_hdr_len, frame_flags(flags), data);
            0
        }
        let mut frames = NetFrames::default();
        // SAFETY: BQL held; `collect` matches MekhaNetFrameFn and `frames` outlives the walk.
        unsafe { boundary::mekha_qemu_net_hold_foreach(Some(collect), &mut frames as *mut NetFrames as *mut c_void) };
        frames
    }

    /// Queues a frame toward the guest in the hold of `netdev`, behind the
    /// frames injected before and ahead of those the netdev sent; false
    /// when it has no hold filter or does not hold.
    pub(crate) fn inject(_bql: &Bql, netdev: &str, flags: u32, data: &[u8]) -> bool {
        let Ok(id) = std::ffi::CString::new(netdev) else { return false };
        let flags = if flags & FRAME_RAW != 0 { boundary::MEKHA_NET_FRAME_RAW } else { 0 };
        // SAFETY: BQL held; valid string and buffer for the call.
        unsafe { boundary::mekha_qemu_net_hold_inject(id.as_ptr(), flags, data.as_ptr(), data.len()) == 0 }
    }

    /// Stops holding; returns the frames dropped for want of room.
    pub(crate) fn release(_bql: &Bql) -> u64 {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_net_hold_release() }
    }

    /// Sends the Ethernet frame `frame` from the NIC of `netdev` out
    /// through it, at once, ahead of what the guest sends later; false
    /// when `netdev` is no NIC's or its link is down.
    pub(crate) fn send(_bql: &Bql, netdev: &str, frame: &[u8]) -> bool {
        let Ok(id) = std::ffi::CString::new(netdev) else { return false };
        // SAFETY: BQL held; valid string and buffer for the call.
        unsafe { boundary::mekha_qemu_net_send(id.as_ptr(), frame.as_ptr(), frame.len()) == 0 }
    }
}

/// QEMU's clocks and the hooks time virtualization needs.
pub(crate) mod clocks {
    use super::*;

    pub(crate) use boundary::MekhaClocks as Clocks;

    /// Reads QEMU's clocks together (thread-safe; no lock needed).
    pub(crate) fn read() -> Clocks {
        let mut c = Clocks { host_ns: 0, host_offset_ns: 0, virtual_ns: 0, ticks: 0, icount: false };
        // SAFETY: fills the struct we pass.
        unsafe { boundary::mekha_qemu_clocks(&mut c) };
        c
    }

    pub(crate) fn set_host_offset(_bql: &Bql, offset_ns: i64) {
        // SAFETY: plain call, BQL held.
        unsafe { boundary::mekha_qemu_set_host_clock_offset(offset_ns) };
    }

    /// TCG without icount only.
    pub(crate) fn advance_vm_clock(_bql: &Bql, ns: i64, ticks: i64) {
        assert!(ns >= 0 && ticks >= 0);
        // SAFETY: BQL held; non-negative steps.
        unsafe { boundary::mekha_qemu_advance_vm_clock(ns, ticks) };
    }

    /// Makes QEMU call `mekha_vm_run_state` on run-state changes.
    pub(crate) fn watch_run_state(_bql: &Bql) {
        // SAFETY: BQL held.
        unsafe { boundary::mekha_qemu_watch_run_state() };
    }
}
