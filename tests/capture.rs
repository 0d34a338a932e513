// SPDX-License-Identifier: GPL-2.0-or-later
//! The capture path under what QEMU does while a checkpoint holds the VM
//! stopped: a guest agent's virtio-serial channel busy or connecting
//! during the pause (copy-on-write), and a disk far slower than the guest
//! dirties its memory (MTD).

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mekha_ckpt_core::instant::wall_ns;
use mekha_ckpt_core::session::checkpoint::{self, EndArgs, Mode, QueryArgs, Status};
use mekha_ckpt_core::session::commands::{
    Checkpoint, CheckpointCancel, CheckpointEnd, QueryCheckpoint, QueryRestore, Restore,
};
use mekha_ckpt_core::session::{self, restore, Empty};
use mekha_coordinator::qmp::{Event, Qmp};
use mekha_rig::{Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(180);
const COMPUTE: u64 = 1 << 40;
const CHUNK: u64 = 1 << 26;
const AGENT_PORT: &str = "org.qemu.guest_agent.0";
/// A slow agent client reads this often: in between, the socket fills and
/// the port's output waits in QEMU.
const SLOW_READS: Duration = Duration::from_millis(300);

fn uffd_wp() -> bool {
    let ok = mekha_ckpt_core::host::Capabilities::probe().userfaultfd_wp;
    if !ok {
        mekha_test_skip::skip("this host has no userfaultfd write protection");
    }
    ok
}

/// A VM whose probe computes and, with `agent` (the channel's socket),
/// streams numbered records to the host over a virtio-serial port named
/// as a guest agent's, as libvirt domains have it.
fn probe_vm(name: &str, agent: Option<&Path>, dirty_mib: u32) -> VmConfig {
    let mut config = VmConfig::new(name);
    config.memory_mib = 256;
    config.probe_args = vec![
        "mekha.id=1".into(),
        format!("probe.compute={COMPUTE}"),
        format!("probe.compute_chunk={CHUNK}"),
        format!("probe.mem={dirty_mib}"),
        "probe.clock_ms=1000".into(),
    ];
    if let Some(sock) = agent {
        config.probe_args.push(format!("probe.vport={AGENT_PORT}"));
        config.extra_args = agent_channel(sock);
    }
    config
}

/// QEMU arguments of the channel: QEMU listens on `sock`.
fn agent_channel(sock: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=ga,path={},server=on,wait=off", sock.display()),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-device".into(),
        format!("virtserialport,chardev=ga,name={AGENT_PORT}"),
    ]
}

/// The probe's record format (tests/guest-probe/src/vport.rs).
const RECORD: usize = 16;

fn parse_record(bytes: &[u8]) -> Option<u64> {
    let r = bytes.get(..RECORD)?;
    let seq = u64::from_le_bytes(r[4..12].try_into().unwrap());
    let check = (seq & 0xffff_ffff) as u32 ^ (seq >> 32) as u32 ^ 0x5a5a_5a5a;
    (&r[..4] == b"MKVP" && u32::from_le_bytes(r[12..].try_into().unwrap()) == check).then_some(seq)
}

/// What the host read of the stream.
#[derive(Debug, Default, Clone)]
struct Stream {
    first: Option<u64>,
    last: Option<u64>,
    records: u64,
    /// Damaged records, and numbers that do not follow the one before.
    anomalies: Vec<String>,
}

impl Stream {
    /// Takes the whole records at the start of `pending`; joins the stream
    /// at the first record found.
    fn take(&mut self, pending: &mut Vec<u8>) {
        let mut at = 0;
        if self.last.is_none() {
            match (0..pending.len()).find(|&i| parse_record(&pending[i..]).is_some()) {
                Some(i) => at = i,
                None => {
                    let keep = pending.len().min(RECORD - 1);
                    pending.drain(..pending.len() - keep);
                    return;
                }
            }
        }
        while pending.len() - at >= RECORD {
            match parse_record(&pending[at..]) {
                Some(seq) => {
                    if let Some(last) = self.last {
                        if seq != last + 1 && self.anomalies.len() < 20 {
                            self.anomalies.push(format!("record {seq} after record {last}"));
                        }
                    }
                    self.first.get_or_insert(seq);
                    self.last = Some(seq);
                    self.records += 1;
                }
                None => {
                    if self.anomalies.len() < 20 {
                        self.anomalies.push(format!("a damaged record after record {:?}", self.last));
                    }
                }
            }
            at += RECORD;
        }
        pending.drain(..at);
    }
}

/// The host side of the channel: reads in bursts every `interval`, so
/// that the port's output waits in QEMU (throttled) in between, as for a
/// slow agent client; checks the records follow each other.
struct AgentReader {
    stream: Arc<Mutex<Stream>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentReader {
    fn start(conn: UnixStream, interval: Duration) -> AgentReader {
        let stream = Arc::new(Mutex::new(Stream::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stream.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conn = conn;
            conn.set_nonblocking(true).unwrap();
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
                s.lock().unwrap().take(&mut pending);
            }
        });
        AgentReader { stream, stop, thread: Some(thread) }
    }

    fn connect(sock: &Path, interval: Duration) -> AgentReader {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(sock) {
                Ok(conn) => return AgentReader::start(conn, interval),
                Err(e) => assert!(Instant::now() < deadline, "connecting to {}: {e}", sock.display()),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stream(&self) -> Stream {
        self.stream.lock().unwrap().clone()
    }

    /// Waits until `more` records arrived after those read so far.
    fn wait_for_more(&self, more: u64, timeout: Duration, what: &str) -> Stream {
        let target = self.stream().records + more;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stream();
            if s.records >= target {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {} of {target} records within {timeout:?}: {s:?}", s.records);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AgentReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a held copy-on-write checkpoint into `image` and waits until it
/// is ready (the test is its coordinator).
async fn start_held_cow(qmp: &Qmp, image: &Path) {
    let args = checkpoint::Args {
        path: image.to_owned(),
        mode: Some(Mode::Cow),
        hold: Some(true),
        lease_ms: Some(60_000),
        time_budget_ms: Some(60_000),
        ..Default::default()
    };
    qmp.call::<Checkpoint>(&args).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = qmp.call::<QueryCheckpoint>(&QueryArgs { renew_lease: Some(true) }).await.unwrap();
        assert_eq!(info.status, Status::Live, "{info:?}");
        if info.ready {
            return;
        }
        assert!(Instant::now() < deadline, "the checkpoint is not ready: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends the held checkpoint's live phase: stop at `stop` (wall clock,
/// ns); the VM resumes as soon as its capture allows.
async fn end_at(qmp: &Qmp, stop: i64) {
    let end = EndArgs { stop_at: Some(stop), cut: None };
    qmp.call::<CheckpointEnd>(&end).await.unwrap();
}

/// The next QMP event named `name`, within `timeout`.
async fn next_event(events: &mut tokio::sync::broadcast::Receiver<Event>, name: &str, timeout: Duration) -> Event {
    tokio::time::timeout(timeout, async {
        loop {
            let e = events.recv().await.expect("QMP events");
            if e.event == name {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} event within {timeout:?}"))
}

/// An event's QMP timestamp, in microseconds.
fn event_us(e: &Event) -> i64 {
    e.timestamp["seconds"].as_i64().unwrap() * 1_000_000 + e.timestamp["microseconds"].as_i64().unwrap()
}

/// Waits for a checkpoint that resumes its VM to complete: QEMU must
/// answer again after the pause. Says how long the copy outlasted it.
async fn completes_without_deadlock(qmp: &Qmp, vm: &Vm) {
    let settled = tokio::time::timeout(Duration::from_secs(30), common::wait_checkpoint_settled(qmp))
        .await
        .unwrap_or_else(|_| panic!("QEMU stopped answering after the pause (deadlocked?):\n{}", vm.stderr()));
    assert_eq!(settled.status, Status::Completed, "{settled:?}");
    let ms = |ns: u64| ns as f64 / 1e6;
    eprintln!(
        "pause {:.1} ms, copy {:.1} ms, {} write faults",
        ms(settled.pause_ns),
        ms(settled.capture_ns),
        settled.wp_faults
    );
    let status = qmp.status().await.unwrap();
    assert_eq!(status.status, "running", "{status:?}");
}

async fn wait_restored(qmp: &Qmp) -> restore::Info {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = qmp.call::<QueryRestore>(&Default::default()).await.unwrap();
        if matches!(info.status, restore::Status::Completed | restore::Status::Failed) {
            return info;
        }
        assert!(Instant::now() < deadline, "the restore did not end: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A copy-on-write checkpoint while the host reads the guest agent
/// channel: QEMU's main loop moves the port's waiting output as soon as
/// it runs again (right after the pause), writing the virtqueue's used
/// ring in protected guest RAM and the port's state. The image must hold
/// RAM and devices of one instant: a fresh QEMU restores it (virtio
/// checks the ring's indices against the device state) and the stream
/// goes on, every record once and in order.
#[tokio::test(flavor = "multi_thread")]
async fn cow_image_is_consistent_with_a_busy_agent_channel_during_the_pause() {
    if !uffd_wp() {
        return;
    }
    let artifacts = common::artifacts();
    let dir = common::test_dir("capture-agent-busy");
    let image = dir.join("vm.mekha");
    let sock = dir.join("ga1.sock");
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run1"), probe_vm("cap-busy", Some(&sock), 8)).unwrap();
    let qmp = vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("vport_open", BOOT, |e| e.ev == "vport_open").unwrap();
    let reader = AgentReader::connect(&sock, SLOW_READS);
    reader.wait_for_more(20_000, BOOT, "the stream before the checkpoint");

    start_held_cow(&qmp, &image).await;
    let stop = wall_ns() + 200_000_000;
    end_at(&qmp, stop).await;
    let settled = common::wait_checkpoint_settled(&qmp).await;
    assert_eq!(settled.status, Status::Completed, "{settled:?}");
    let before = reader.wait_for_more(20_000, BOOT, "the stream after the checkpoint");
    eprintln!("checkpoint: {settled:?}\nstream: {before:?}");
    assert!(before.anomalies.is_empty(), "the running VM's stream: {before:?}");
    drop(reader);
    vm.kill();

    let sock = dir.join("ga2.sock");
    let mut config = probe_vm("cap-busy", Some(&sock), 8);
    config.incoming = true;
    let mut restored = Vm::launch(&artifacts, None, &dir.join("run2"), config).unwrap();
    let qmp = restored.qmp().await.unwrap();
    let reader = AgentReader::connect(&sock, SLOW_READS);
    qmp.call::<Restore>(&restore::Args { path: image, ..Default::default() }).await.unwrap();
    let info = wait_restored(&qmp).await;
    assert_eq!(info.status, restore::Status::Completed, "{info:?}\nQEMU: {}", restored.stderr());
    let after = reader.wait_for_more(20_000, BOOT, "the restored VM's stream");
    assert!(after.anomalies.is_empty(), "the restored VM's stream: {after:?}");
    let events = restored.log().events();
    assert!(!events.iter().any(|e| e.ev == "start" || e.ev == "error"), "{:?}", restored.log().tail(20));
}

/// A guest agent client connects around a copy-on-write checkpoint's
/// pause: QEMU tells the guest, writing guest RAM, from the main loop or
/// (connected while the VM is stopped) from the thread that starts it,
/// which the checkpoint's thread is. The VM resumes, the checkpoint
/// completes and the channel works. The guest keeps 768 MiB of its RAM
/// written, so that the copy outlasts the pause: the write meets a page
/// not copied yet.
#[tokio::test(flavor = "multi_thread")]
async fn cow_resume_writing_protected_ram_does_not_deadlock() {
    if !uffd_wp() {
        return;
    }
    let artifacts = common::artifacts();
    let dir = common::test_dir("capture-agent-connect");
    let sock = dir.join("ga.sock");
    let mut config = probe_vm("cap-connect", Some(&sock), 768);
    config.memory_mib = 1024;
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), config).unwrap();
    let qmp = vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("vport_open", BOOT, |e| e.ev == "vport_open").unwrap();
    log.wait_for("a pass over the dirtied memory", BOOT, |e| e.ev == "dirty" && e.u64("passes").unwrap_or(0) > 0)
        .unwrap();

    start_held_cow(&qmp, &dir.join("vm.mekha")).await;
    let mut events = qmp.subscribe();
    let stop = wall_ns() + 200_000_000;
    end_at(&qmp, stop).await;
    next_event(&mut events, "STOP", Duration::from_secs(10)).await;
    let reader = AgentReader::connect(&sock, Duration::from_millis(5));
    completes_without_deadlock(&qmp, &vm).await;
    let stream = reader.wait_for_more(10_000, BOOT, "the stream after the resume");
    assert!(stream.anomalies.is_empty(), "{stream:?}");
    assert!(vm.is_running(), "{}", vm.stderr());
}

/// A multiqueue NIC without vhost, whose frames cannot be held: frames
/// reaching it while a copy-on-write checkpoint holds the VM stopped wait
/// in QEMU's queue, and `vm_start` flushes them into guest RAM not copied
/// yet, from the checkpoint's thread. The VM resumes, the checkpoint
/// completes and the exchange with a peer goes on.
#[tokio::test(flavor = "multi_thread")]
async fn cow_resume_flushing_an_unheld_nic_does_not_deadlock() {
    if !uffd_wp() {
        return;
    }
    let artifacts = common::artifacts();
    let dir = common::test_dir("capture-multiqueue-nic");
    let netns = mekha_rig::Netns::create().unwrap();
    let ns_ip = |args: &[&str]| netns.ip(args).unwrap();
    ns_ip(&["tuntap", "add", "dev", "mqtap", "mode", "tap", "multi_queue"]);
    ns_ip(&["link", "set", "mqtap", "master", mekha_rig::netns::BRIDGE]);
    ns_ip(&["link", "set", "mqtap", "up"]);
    ns_ip(&["addr", "add", "10.99.0.1/24", "dev", mekha_rig::netns::BRIDGE]);
    // The peer: the probe on the host side of the bridge.
    let peer_log = dir.join("peer.log");
    let mut peer = netns
        .command(&artifacts.probe)
        .args(["--cmdline", "mekha.id=0 probe.peers=10.99.0.2 probe.msg_interval_ms=1 probe.clock_ms=0"])
        .stdout(std::fs::File::create(&peer_log).unwrap())
        .spawn()
        .unwrap();

    let mut config = probe_vm("cap-mq", None, 768);
    config.memory_mib = 1024;
    config
        .probe_args
        .extend(["mekha.ip=10.99.0.2/24", "probe.peers=10.99.0.1", "probe.msg_interval_ms=1"].map(String::from));
    config.extra_args = [
        "-netdev",
        "tap,id=mq0,ifname=mqtap,script=no,downscript=no,queues=2,vhost=off",
        "-device",
        "virtio-net-pci,netdev=mq0,mq=on,vectors=6,mac=52:54:00:99:00:02,romfile=",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::launch(&artifacts, Some(&netns), &dir.join("run"), config).unwrap();
    let qmp = vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("a pass over the dirtied memory", BOOT, |e| e.ev == "dirty" && e.u64("passes").unwrap_or(0) > 0)
        .unwrap();
    let exchanging = |min: u64| {
        let log = &log;
        move || log.wait_for("messages from the peer", BOOT, |e| e.ev == "net" && e.u64("received") > Some(min))
    };
    let before = exchanging(500)().unwrap().u64("received").unwrap();

    start_held_cow(&qmp, &dir.join("vm.mekha")).await;
    let stop = wall_ns() + 200_000_000;
    end_at(&qmp, stop).await;
    completes_without_deadlock(&qmp, &vm).await;
    assert!(vm.stderr().contains("cannot be held"), "{}", vm.stderr());
    exchanging(before + 2000)().unwrap();
    let _ = peer.kill();
    let _ = peer.wait();
    assert!(vm.is_running(), "{}", vm.stderr());
}

/// An ext4 filesystem on a loop device whose writes a blkio cgroup
/// throttles (by the processes put in it): a slow disk. Undone on drop.
struct SlowDisk {
    mount: PathBuf,
    loop_dev: String,
    cgroup: PathBuf,
}

impl SlowDisk {
    fn new(dir: &Path, bytes_per_second: u64) -> Option<SlowDisk> {
        let backing = dir.join("slow-disk.img");
        std::fs::File::create(&backing).unwrap().set_len(1 << 30).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&backing).output().unwrap();
        if !out.status.success() {
            mekha_test_skip::skip(&format!("no loop device: {}", String::from_utf8_lossy(&out.stderr)));
            return None;
        }
        let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/blkio/mekha-slow-{}", std::process::id()));
        let mount = dir.join("slow");
        let disk = SlowDisk { mount, loop_dev, cgroup };
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("mkfs.ext4").args(["-q", &disk.loop_dev])), "mkfs.ext4 {}", disk.loop_dev);
        std::fs::create_dir_all(&disk.mount).unwrap();
        assert!(ok(Command::new("mount").arg(&disk.loop_dev).arg(&disk.mount)));
        if std::fs::create_dir_all(&disk.cgroup).is_err() {
            mekha_test_skip::skip("no blkio cgroup (v1) to throttle a disk with");
            return None;
        }
        let dev = std::fs::metadata(&disk.loop_dev).map(|m| std::os::unix::fs::MetadataExt::rdev(&m)).unwrap();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        std::fs::write(
            disk.cgroup.join("blkio.throttle.write_bps_device"),
            format!("{major}:{minor} {bytes_per_second}"),
        )
        .unwrap();
        Some(disk)
    }

    /// Process `pid`'s writes to the disk go at the throttled rate.
    fn admit(&self, pid: u32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.loop_dev]).status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// The guest rewrites 64 MiB without pause, staging holds 16 MiB, the
/// image goes to a disk that writes 8 MiB/s. The pause, measured by
/// QEMU's own STOP and RESUME events, stays short whatever the disk does
/// (the pages that do not fit fail the checkpoint, clearly, instead of
/// holding the VM stopped until the disk took them), and the VM runs on.
/// Copy-on-write with staging smaller than RAM, where faulting guest
/// writes would wait for the disk, is refused, and auto takes MTD.
#[tokio::test(flavor = "multi_thread")]
async fn mtd_pause_stays_short_with_a_slow_disk_and_small_staging() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("capture-slow-disk");
    let Some(disk) = SlowDisk::new(&dir, 8 << 20) else { return };
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), probe_vm("cap-slow", None, 64)).unwrap();
    disk.admit(vm.pid());
    let qmp = vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("dirtying", BOOT, |e| e.ev == "dirty" && e.u64("pages_written").unwrap_or(0) > 0).unwrap();
    log.wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    let image = disk.mount.join("vm.mekha");

    let mut events = qmp.subscribe();
    let args = checkpoint::Args {
        path: image.clone(),
        mode: Some(Mode::Mtd),
        staging_mib: Some(16),
        time_budget_ms: Some(2000),
        ..Default::default()
    };
    qmp.call::<Checkpoint>(&args).await.unwrap();
    let settled = common::wait_checkpoint_settled(&qmp).await;
    let stop = next_event(&mut events, "STOP", Duration::from_secs(1)).await;
    let resume = next_event(&mut events, "RESUME", Duration::from_secs(1)).await;
    let pause_ms = (event_us(&resume) - event_us(&stop)) as f64 / 1000.0;
    eprintln!("pause {pause_ms:.1} ms; {settled:?}");
    assert!(pause_ms < 1000.0, "the VM stayed stopped {pause_ms:.1} ms, waiting for the disk: {settled:?}");
    match settled.status {
        Status::Completed => {}
        Status::Failed => {
            assert_eq!(settled.error_kind, Some(session::ErrorKind::StagingFull), "{settled:?}");
            let error = settled.error.as_deref().unwrap_or("");
            assert!(error.contains("staging budget") && error.contains("runs on"), "{settled:?}");
        }
        _ => panic!("{settled:?}"),
    }

    let cow =
        checkpoint::Args { path: image.clone(), mode: Some(Mode::Cow), staging_mib: Some(16), ..Default::default() };
    let refused = qmp.call::<Checkpoint>(&cow).await.unwrap_err().to_string();
    assert!(refused.contains("staging budget") && refused.contains("wait for the disk"), "{refused}");
    if mekha_ckpt_core::host::Capabilities::probe().userfaultfd_wp {
        let auto = checkpoint::Args { path: image, staging_mib: Some(16), hold: Some(true), ..Default::default() };
        qmp.call::<Checkpoint>(&auto).await.unwrap();
        let info = qmp.call::<QueryCheckpoint>(&Default::default()).await.unwrap();
        assert_eq!(info.mode, Some(Mode::Mtd), "{info:?}");
        assert!(info.mode_reason.as_deref().unwrap_or("").contains("staging budget"), "{info:?}");
        qmp.call::<CheckpointCancel>(&Empty {}).await.unwrap();
        common::wait_checkpoint_settled(&qmp).await;
    }
    let status = qmp.status().await.unwrap();
    assert_eq!(status.status, "running", "{status:?}");
    let step = log.events().iter().filter(|e| e.ev == "compute").filter_map(|e| e.u64("step")).max().unwrap();
    log.wait_for("progress after the checkpoint", BOOT, |e| e.ev == "compute" && e.u64("step").unwrap() > step)
        .unwrap();
    vm.kill();
    drop(disk);
}
