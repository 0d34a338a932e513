// SPDX-License-Identifier: GPL-2.0-or-later
//! Spec mode's hands: the private network (a namespace with a bridge and
//! one tap per NIC) and the QEMU processes, which outlive the `mekha`
//! command that started them (own process group, output in the state
//! directory, pid files), so that `up`, `checkpoint`, `restart`, `status`
//! and `down` can be separate invocations of a batch script.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::firmware;
use crate::qmp::Qmp;
use crate::spec::{NetworkSpec, Spec, VmSpec};

/// Interface names are at most 15 bytes: taps are `mk<index>-<spec hash>`.
fn tap_name(spec: &Spec, index: usize) -> String {
    let hash = spec.name.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    format!("mk{index}-{:06x}", hash & 0xff_ffff)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// `ip` inside the spec's namespace, or in this one when it names none.
fn ip_in(net: &NetworkSpec, args: &[&str]) -> Result<(), String> {
    match &net.namespace {
        Some(ns) => ip(&[&["-n", ns.as_str()], args].concat()),
        None => ip(args),
    }
}

fn ip_in_ok(net: &NetworkSpec, args: &[&str]) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = &net.namespace {
        cmd.args(["-n", ns]);
    }
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Makes the namespace and bridge exist; returns what was created now
/// (and `down` removes).
fn ensure_network(net: &NetworkSpec) -> Result<Created, String> {
    let mut created = Created::Nothing;
    if let Some(ns) = &net.namespace {
        if !Path::new("/run/netns").join(ns).exists() {
            ip(&["netns", "add", ns]).map_err(|e| format!("{e} (creating network namespaces needs root)"))?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            created = Created::Namespace;
        }
    }
    if !ip_in_ok(net, &["link", "show", &net.bridge]) {
        ip_in(net, &["link", "add", &net.bridge, "type", "bridge"])?;
        if created == Created::Nothing {
            created = Created::Bridge;
        }
    }
    ip_in(net, &["link", "set", &net.bridge, "up"])?;
    Ok(created)
}

/// What `up` made of the network, recorded in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    Nothing,
    Namespace,
    Bridge,
}

fn ensure_tap(net: &NetworkSpec, tap: &str) -> Result<(), String> {
    if !ip_in_ok(net, &["link", "show", tap]) {
        ip_in(net, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    }
    ip_in(net, &["link", "set", tap, "master", &net.bridge])?;
    ip_in(net, &["link", "set", tap, "up"])
}

fn pid_path(spec: &Spec, vm: &str) -> PathBuf {
    spec.state_dir().join(format!("{vm}.pid"))
}

fn created_marker(spec: &Spec, what: Created) -> PathBuf {
    spec.state_dir().join(if what == Created::Bridge { "bridge-created" } else { "netns-created" })
}

/// The pid of VM `vm`'s QEMU if it runs: the pid file's process, if it
/// is still the QEMU with this VM's QMP socket (pids get reused).
pub fn running_pid(spec: &Spec, vm: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_path(spec, vm)).ok()?.trim().parse().ok()?;
    // Reap it if it is our own exited child (a no-op otherwise).
    // SAFETY: non-blocking wait for one pid; no status wanted.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let sock = spec.qmp_path(vm);
    let needle = sock.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref()).then_some(pid)
}

/// Starts every VM's QEMU (with `-incoming defer` when `incoming`) and
/// waits for their QMP sockets. A long-lived caller (the agent) keeps the
/// children to reap them when they exit; a `mekha` command just exits.
pub async fn start_all(spec: &Spec, incoming: bool) -> Result<Vec<std::process::Child>, String> {
    fs::create_dir_all(spec.state_dir()).map_err(|e| format!("state directory {}: {e}", spec.state_dir().display()))?;
    if let Some(vm) = spec.vms.iter().find(|vm| running_pid(spec, &vm.name).is_some()) {
        return Err(format!("VM {} of spec {} runs already (mekha down first)", vm.name, spec.name));
    }
    // Before anything starts: every VM's firmware and ROMs are there.
    let dirs = firmware::data_dirs(&spec.qemu)?;
    for (index, vm) in spec.vms.iter().enumerate() {
        firmware::check(&spec.qemu, &dirs, &vm.name, &qemu_args(spec, vm, &tap_name(spec, index)))?;
    }
    if let Some(net) = &spec.network {
        let created = ensure_network(net)?;
        if created != Created::Nothing {
            File::create(created_marker(spec, created)).map_err(|e| e.to_string())?;
        }
    }
    let mut children = Vec::new();
    for (index, vm) in spec.vms.iter().enumerate() {
        children.push(start_vm(spec, index, vm, incoming)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Our own children: their exit shows here at once (a pid file's
    // cmdline check could race with the exec).
    for (vm, child) in spec.vms.iter().zip(&mut children) {
        let sock = spec.qmp_path(&vm.name);
        loop {
            if sock.exists() && Qmp::connect(&sock).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = log_tail(spec, &vm.name);
                let hint = firmware::explain_start_failure(&tail).map(|h| format!(" ({h})")).unwrap_or_default();
                return Err(format!("VM {}'s QEMU exited ({status}): {tail}{hint}", vm.name));
            }
            if Instant::now() > deadline {
                return Err(format!("VM {}: no QMP socket at {} after 30 s", vm.name, sock.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(children)
}

/// VM `vm`'s QEMU arguments (but `-incoming`): mekha's name and QMP
/// socket, the spec's arguments, its NIC on `tap`.
fn qemu_args(spec: &Spec, vm: &VmSpec, tap: &str) -> Vec<String> {
    let sock = spec.qmp_path(&vm.name);
    let mut args = vec![
        "-name".to_owned(),
        format!("guest={}", vm.name),
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ];
    args.extend(vm.args.iter().cloned());
    if let (Some(nic), Some(_)) = (&vm.nic, &spec.network) {
        args.extend([
            "-netdev".to_owned(),
            format!("tap,id=mk-net0,ifname={tap},script=no,downscript=no"),
            "-device".to_owned(),
            format!("{},netdev=mk-net0,mac={}", nic.model, nic.mac),
        ]);
    }
    args
}

fn start_vm(spec: &Spec, index: usize, vm: &VmSpec, incoming: bool) -> Result<std::process::Child, String> {
    let sock = spec.qmp_path(&vm.name);
    let _ = fs::remove_file(&sock);
    let mut cmd = match spec.network.as_ref().and_then(|n| n.namespace.as_ref()) {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&spec.qemu);
            c
        }
        None => Command::new(&spec.qemu),
    };
    if let (Some(_), Some(net)) = (&vm.nic, &spec.network) {
        ensure_tap(net, &tap_name(spec, index))?;
    }
    cmd.args(qemu_args(spec, vm, &tap_name(spec, index)));
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.state_dir().join(format!("{}.log", vm.name)))
        .map_err(|e| format!("VM {}: log file: {e}", vm.name))?;
    // The log keeps every run's output; a mark starts each.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    writeln!(log, "{LOG_MARK} at unix time {started}{}", if incoming { ", -incoming defer" } else { "" })
        .map_err(|e| format!("VM {}: log file: {e}", vm.name))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    // Its own process group: a Ctrl-C or a batch step's end that kills
    // this command's group does not take the VMs with it.
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("VM {}: starting {}: {e}", vm.name, spec.qemu.display()))?;
    fs::write(pid_path(spec, &vm.name), format!("{}\n", child.id())).map_err(|e| e.to_string())?;
    Ok(child)
}

/// Starts the lines `start_vm` writes into a VM's log before its QEMU's.
const LOG_MARK: &str = "--- mekha: QEMU started";

/// The end of VM `vm`'s QEMU output since its last start, for error
/// messages.
pub fn log_tail(spec: &Spec, vm: &str) -> String {
    let text = fs::read_to_string(spec.state_dir().join(format!("{vm}.log"))).unwrap_or_default();
    last_run_tail(&text)
}

fn last_run_tail(log: &str) -> String {
    let run = log.rfind(LOG_MARK).map_or(log, |at| log[at..].split_once('\n').map_or("", |(_, rest)| rest));
    let lines: Vec<&str> = run.lines().collect();
    if lines.is_empty() {
        return "(no output)".into();
    }
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Stops every VM's QEMU: QMP `quit`, then SIGKILL after `grace`.
pub async fn stop_all(spec: &Spec, grace: Duration) {
    for vm in &spec.vms {
        if running_pid(spec, &vm.name).is_some() {
            if let Ok(qmp) = Qmp::connect(spec.qmp_path(&vm.name)).await {
                let _ = qmp.execute("quit", serde_json::Value::Null).await;
            }
        }
    }
    let deadline = Instant::now() + grace;
    for vm in &spec.vms {
        while let Some(pid) = running_pid(spec, &vm.name) {
            if Instant::now() > deadline {
                // SAFETY: plain signal to a process we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = fs::remove_file(pid_path(spec, &vm.name));
    }
}

/// Removes the network `up` created (the namespace, with its bridge and
/// taps, or the bridge); what existed before is left, without mekha's taps.
pub fn remove_network(spec: &Spec) {
    let Some(net) = &spec.network else { return };
    let (namespace, bridge) = (created_marker(spec, Created::Namespace), created_marker(spec, Created::Bridge));
    match &net.namespace {
        Some(ns) if namespace.exists() => {
            let _ = ip(&["netns", "delete", ns]);
        }
        _ => {
            for (index, vm) in spec.vms.iter().enumerate() {
                if vm.nic.is_some() {
                    let _ = ip_in(net, &["link", "delete", &tap_name(spec, index)]);
                }
            }
            if bridge.exists() {
                let _ = ip_in(net, &["link", "delete", &net.bridge]);
            }
        }
    }
    let _ = fs::remove_file(namespace);
    let _ = fs::remove_file(bridge);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_shows_the_last_run_only() {
        let log = format!(
            "{LOG_MARK} at unix time 1\nold error\n{LOG_MARK} at unix time 2, -incoming defer\n\
             a\nb\nc\nd\ne\nf: cannot open image\n"
        );
        assert_eq!(last_run_tail(&log), "b | c | d | e | f: cannot open image");
        assert_eq!(last_run_tail(&format!("{LOG_MARK} at unix time 3\n")), "(no output)");
        // A log from before the marks: its last lines.
        assert_eq!(last_run_tail("x\ny\n"), "x | y");
    }
}
