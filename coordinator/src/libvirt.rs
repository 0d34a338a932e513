// SPDX-License-Identifier: GPL-2.0-or-later
//! The QMP monitor of a libvirt-managed VM, through libvirt's remote API:
//! commands with `virDomainQemuMonitorCommand`, events with
//! `virConnectDomainQemuMonitorEventRegister`, over any libvirt URI
//! (`qemu:///system`, `qemu+ssh://`, `qemu+tls://`, ...). libvirt
//! authenticates, encrypts and keeps its own monitor connection: the VM
//! needs no second QMP socket, and nothing new listens on the network.
//!
//! The bridge presents that as a QMP byte stream — a greeting, replies
//! carrying the client's ids, events as QEMU words them — so the rest of
//! the coordinator talks to a libvirt domain as to a socket. Commands run
//! one at a time, in order, as on a monitor.

use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use crate::qmp::{json_line, Stream};

/// Room for replies the client has not read yet (a query-qmp-schema
/// reply is about 200 KiB).
const PIPE: usize = 1 << 20;

/// A QMP byte stream to domain `domain` of the libvirt at `uri`.
pub async fn open(uri: &str, domain: &str) -> Result<Box<dyn Stream>, String> {
    start_event_loop()?;
    let (lines, mut outgoing) = unbounded_channel::<Vec<u8>>();
    let (uri, name, events) = (uri.to_owned(), domain.to_owned(), lines.clone());
    // Opening may run ssh and authenticate; every call is a round trip:
    // off the reactor.
    let bridge = tokio::task::spawn_blocking(move || {
        let mut conn = Connect::open(Some(&uri)).map_err(|e| format!("libvirt {uri}: {}", e.message()))?;
        // The first call that needs libvirt's QEMU driver to work: where
        // libvirt cannot use its emulator, its reason is the error.
        let version = match qemu_version(&conn) {
            Ok(version) => version,
            Err(e) => {
                let _ = conn.close();
                return Err(format!("libvirt {uri}: libvirt cannot use its QEMU: {e}"));
            }
        };
        let dom = match Domain::lookup_by_name(&conn, &name) {
            Ok(dom) => dom,
            Err(e) => {
                let _ = conn.close();
                return Err(format!("libvirt {uri}: domain {name}: {}", e.message()));
            }
        };
        let bridge = Bridge { conn, dom, events: None.into() };
        let greeting = json!({ "QMP": { "version": version, "capabilities": [] } });
        let _ = events.send(json_line(&greeting));
        if let Err(e) = bridge.register_events(events) {
            bridge.close();
            return Err(format!("libvirt {uri}: domain {name}: {e}"));
        }
        Ok(Arc::new(bridge))
    })
    .await
    .map_err(|e| e.to_string())??;

    let (client, ours) = tokio::io::duplex(PIPE);
    let (read, mut write) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut commands = BufReader::new(read).lines();
        while let Ok(Some(command)) = commands.next_line().await {
            let b = bridge.clone();
            let Ok(reply) = tokio::task::spawn_blocking(move || b.execute(&command)).await else { break };
            match reply {
                Some(reply) => {
                    let _ = lines.send(json_line(&reply));
                }
                None => break,
            }
        }
        // The client has gone (or the connection to libvirt has): let go
        // of libvirt; the writer ends once the event sender goes too.
        drop(lines);
        let _ = tokio::task::spawn_blocking(move || bridge.close()).await;
    });
    Ok(Box::new(client))
}

/// One libvirt connection and domain, shared by the bridge's tasks.
struct Bridge {
    conn: Connect,
    dom: Domain,
    /// The event callback's registration id.
    events: std::sync::Mutex<Option<i32>>,
}

impl Bridge {
    /// Runs one QMP command line; `None` when libvirt or the domain's QEMU
    /// is gone (as a monitor socket closes when QEMU exits).
    fn execute(&self, command: &str) -> Option<Value> {
        let mut request: Value = match serde_json::from_str(command) {
            Ok(v) => v,
            Err(e) => return Some(error_reply(Value::Null, &format!("malformed command: {e}"))),
        };
        let id = request.as_object_mut().and_then(|o| o.remove("id")).unwrap_or(Value::Null);
        // libvirt negotiated capabilities on its own connection.
        if request["execute"] == "qmp_capabilities" {
            return Some(with_id(json!({ "return": {} }), id));
        }
        match self.dom.qemu_monitor_command(&request.to_string(), 0) {
            Ok(text) => Some(match serde_json::from_str::<Value>(&text) {
                Ok(reply) => with_id(reply, id),
                Err(e) => error_reply(id, &format!("libvirt returned a malformed reply: {e}")),
            }),
            Err(_) if !self.conn.is_alive().unwrap_or(false) || !self.dom.is_active().unwrap_or(false) => None,
            Err(e) => Some(error_reply(id, &format!("libvirt: {}", e.message()))),
        }
    }

    /// Every QEMU event of the domain goes to `lines`.
    fn register_events(&self, lines: UnboundedSender<Vec<u8>>) -> Result<(), String> {
        let opaque = Box::into_raw(Box::new(lines)) as *mut c_void;
        // SAFETY: the pointers are live for the call; libvirt owns
        // `opaque` from here and frees it with `drop_sender`.
        let id = unsafe {
            sys::virConnectDomainQemuMonitorEventRegister(
                self.conn.as_ptr(),
                self.dom.as_ptr(),
                std::ptr::null(),
                Some(on_event),
                opaque,
                Some(drop_sender),
                0,
            )
        };
        if id < 0 {
            // SAFETY: libvirt did not take `opaque` on failure.
            drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<Vec<u8>>) });
            return Err(format!("cannot watch the domain's QEMU events: {}", last_error()));
        }
        *self.events.lock().unwrap() = Some(id);
        Ok(())
    }

    fn close(&self) {
        if let Some(id) = self.events.lock().unwrap().take() {
            // SAFETY: an id this connection returned.
            unsafe { sys::virConnectDomainQemuMonitorEventDeregister(self.conn.as_ptr(), id) };
        }
        // SAFETY: the last use of the connection; `Connect` does not close
        // itself on drop, and the domain's own reference goes with it.
        unsafe { sys::virConnectClose(self.conn.as_ptr()) };
    }
}

/// QEMU's version as its greeting gives it, from libvirt's view of the
/// hypervisor (major * 1000000 + minor * 1000 + micro).
fn qemu_version(conn: &Connect) -> Result<Value, String> {
    let v = conn.get_hyp_version().map_err(|e| e.message().to_owned())?;
    Ok(json!({ "qemu": { "major": v / 1_000_000, "minor": v / 1000 % 1000, "micro": v % 1000 }, "package": "" }))
}

/// libvirt's event callback: the event as QEMU sends it.
unsafe extern "C" fn on_event(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    event: *const c_char,
    seconds: std::os::raw::c_longlong,
    micros: std::os::raw::c_uint,
    details: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the sender `register_events` leaked; the strings
    // are libvirt's, valid during the call.
    let lines = unsafe { &*(opaque as *const UnboundedSender<Vec<u8>>) };
    let text = |p: *const c_char| {
        // SAFETY: as above, a NUL-terminated string of libvirt's.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let data = text(details).and_then(|d| serde_json::from_str::<Value>(&d).ok()).unwrap_or(json!({}));
    let event = json!({
        "event": text(event).unwrap_or_default(),
        "data": data,
        "timestamp": { "seconds": seconds, "microseconds": micros },
    });
    let _ = lines.send(json_line(&event));
}

unsafe extern "C" fn drop_sender(opaque: *mut c_void) {
    // SAFETY: the box `register_events` leaked, freed once by libvirt.
    drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<Vec<u8>>) });
}

/// libvirt dispatches events (and keeps remote connections alive) from an
/// event loop the process runs: one thread, registered before the first
/// connection opens.
fn start_event_loop() -> Result<(), String> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            // SAFETY: once per process, before any connection.
            if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
                return Err(format!("libvirt: cannot start its event loop: {}", last_error()));
            }
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    // SAFETY: the default implementation, registered above.
                    unsafe { sys::virEventRunDefaultImpl() };
                })
                .map(drop)
                .map_err(|e| format!("libvirt: cannot start its event loop: {e}"))
        })
        .clone()
}

fn last_error() -> String {
    virt::error::Error::last_error().message().to_owned()
}

fn with_id(mut reply: Value, id: Value) -> Value {
    if let Some(o) = reply.as_object_mut() {
        o.remove("id");
        if !id.is_null() {
            o.insert("id".into(), id);
        }
    }
    reply
}

fn error_reply(id: Value, desc: &str) -> Value {
    with_id(json!({ "error": { "class": "GenericError", "desc": desc } }), id)
}
