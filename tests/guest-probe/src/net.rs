// SPDX-License-Identifier: GPL-2.0-or-later
//! The message exchange with the peers, over TCP and UDP on one port.
//!
//! Every probe listens on TCP and UDP port `probe.port` (0.0.0.0, IPv4).
//! For each peer it runs two senders:
//! - TCP: connect (retrying every 200 ms until the peer listens), send the
//!   messages one per `msg_interval_ms`; when the connection breaks, report
//!   `net_disconnect`, reconnect and go on from the message that failed.
//!   Once all messages are sent the connection stays open and idle. When a
//!   peer connects again, its previous incoming connection is closed (and
//!   reported with `net_disconnect`, `dir: in`).
//! - UDP: starts once the TCP connection to that peer first succeeded (the
//!   peer's UDP socket is bound before its TCP listener, so no datagram is
//!   sent before anybody listens), then sends the messages the same way,
//!   or `probe.udp_rate` per second on a schedule (see `Pace`).
//!
//! The UDP socket's receive buffer is raised (`UDP_RCVBUF`): a TCG guest
//! stalls for milliseconds, and a full buffer would drop datagrams that no
//! checkpoint lost. The guest's own UDP drop counters are reported (`udp`).
//!
//! Received messages are checked per (source IP, proto) with `SeqCheck`.
//! A stream is done (`net_done`) once all `probe.msgs` messages were sent to
//! the peer and received from it; if some are missing but the last one came,
//! it is done after `DONE_GRACE` without news, with `complete: false`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::output::Output;
use crate::seqcheck::{SeqCheck, Verdict};
use crate::wire::{self, DecodeError, MSG_LEN};

const CONNECT_RETRY: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// With the last message received but some still missing, how long to wait
/// for late ones before declaring the stream done anyway.
const DONE_GRACE: Duration = Duration::from_secs(2);
/// `net_anomaly` events printed per link at most (then one of kind
/// `suppressed`); the counters keep counting. A peer that restarts from
/// seq 0 would otherwise print one line per message it sends.
const MAX_ANOMALY_EVENTS: u64 = 1000;
/// The UDP socket's receive buffer: seconds of the highest rate a test
/// asks for (a small datagram takes a few KiB of buffer), for a guest
/// just restored, which runs slowly while it faults its pages in.
const UDP_RCVBUF: libc::c_int = 32 << 20;
/// How far a paced sender catches up after a stall (the guest's vCPU
/// descheduled, a restore): further behind, it starts its schedule anew
/// rather than send a burst the receiver could not take.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);
/// A paced sender sleeps only when its next message is due further
/// ahead than this, and then sends what falls due in this span at once:
/// one timer wake-up per burst, not per message, which a TCG guest
/// cannot afford at thousands of messages a second.
const BURST: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One stream pair with a peer over one protocol: what we sent to it and
/// what we received from it.
#[derive(Default)]
struct Link {
    /// The peer is in `probe.peers` (streams from others are tracked too).
    configured: bool,
    sent: u64,
    check: SeqCheck,
    /// The sender id the peer's messages carry.
    peer_id: Option<u32>,
    last_rx: Option<Instant>,
    done: bool,
    /// `net_anomaly` events printed for this link.
    anomalies: u64,
    /// The counters as last printed in a `net` event.
    reported: Option<Value>,
}

type Key = (Ipv4Addr, Proto);

pub struct Net {
    out: Arc<Output>,
    id: u32,
    port: u16,
    msgs: u64,
    interval: Duration,
    /// Datagrams per second of each UDP stream (0: one per `interval`).
    udp_rate: u64,
    peers: Vec<Ipv4Addr>,
    /// Per peer: its TCP connection succeeded once (UDP may start).
    tcp_up: Vec<AtomicBool>,
    links: Mutex<BTreeMap<Key, Link>>,
}

fn ipv4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// The sockets, bound but not yet served.
pub struct Bound {
    net: Arc<Net>,
    udp: UdpSocket,
    listener: TcpListener,
}

impl Net {
    /// Bind the UDP socket, then the TCP listener (so that a peer that can
    /// connect over TCP can also send datagrams).
    pub fn bind(
        out: Arc<Output>,
        id: u32,
        port: u16,
        peers: Vec<Ipv4Addr>,
        msgs: u64,
        msg_interval_ms: u64,
        udp_rate: u64,
    ) -> io::Result<Bound> {
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let udp = UdpSocket::bind(any)?;
        raise_rcvbuf(&udp)?;
        let listener = TcpListener::bind(any)?;
        let mut links = BTreeMap::new();
        for &p in &peers {
            for proto in [Proto::Tcp, Proto::Udp] {
                let mut link = Link { configured: true, ..Link::default() };
                // Nothing to report until something happens.
                link.reported = Some(Self::counters(&(p, proto), &link));
                links.insert((p, proto), link);
            }
        }
        let net = Arc::new(Net {
            out,
            id,
            port,
            msgs,
            interval: Duration::from_millis(msg_interval_ms),
            udp_rate,
            tcp_up: peers.iter().map(|_| AtomicBool::new(false)).collect(),
            peers,
            links: Mutex::new(links),
        });
        Ok(Bound { net, udp, listener })
    }
}

impl Bound {
    /// Start the receivers and the senders.
    pub fn start(self) -> io::Result<Arc<Net>> {
        let Bound { net, udp, listener } = self;
        let n = net.clone();
        let rx = udp.try_clone()?;
        thread::Builder::new().name("udp-rx".into()).spawn(move || n.udp_receiver(rx))?;
        let n = net.clone();
        thread::Builder::new().name("tcp-accept".into()).spawn(move || n.tcp_acceptor(listener))?;
        for i in 0..net.peers.len() {
            let n = net.clone();
            thread::Builder::new().name(format!("tcp-tx-{i}")).spawn(move || n.tcp_sender(i))?;
            let n = net.clone();
            let tx = udp.try_clone()?;
            thread::Builder::new().name(format!("udp-tx-{i}")).spawn(move || n.udp_sender(i, tx))?;
        }
        Ok(net)
    }
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters(key: &Key, link: &Link) -> Value {
        let c = &link.check;
        json!({
            "peer": key.0.to_string(),
            "proto": key.1.as_str(),
            "peer_id": link.peer_id,
            "sent": link.sent,
            "received": c.received,
            "next_seq": c.next_seq,
            "lost": c.lost,
            "dup": c.dup,
            "reordered": c.reordered,
            "corrupt": c.corrupt,
        })
    }

    fn anomaly(&self, key: &Key, link: &mut Link, kind: &str, details: Value) {
        link.anomalies += 1;
        if link.anomalies > MAX_ANOMALY_EVENTS {
            return;
        }
        if link.anomalies == MAX_ANOMALY_EVENTS {
            let v = json!({ "peer": key.0.to_string(), "proto": key.1.as_str(), "kind": "suppressed",
                            "after": MAX_ANOMALY_EVENTS });
            self.out.emit("net_anomaly", v);
            return;
        }
        let mut v = json!({ "peer": key.0.to_string(), "proto": key.1.as_str(), "kind": kind });
        if let (Value::Object(m), Value::Object(d)) = (&mut v, details) {
            m.extend(d);
        }
        self.out.emit("net_anomaly", v);
    }

    /// Declare the link done when it is (see the module doc).
    fn check_done(&self, key: &Key, link: &mut Link) {
        if self.msgs == 0 || link.done || !link.configured || link.sent < self.msgs {
            return;
        }
        let complete = link.check.complete(self.msgs);
        let waited = link.check.next_seq >= self.msgs && link.last_rx.is_some_and(|t| t.elapsed() >= DONE_GRACE);
        if complete || waited {
            link.done = true;
            let mut v = Self::counters(key, link);
            v["complete"] = complete.into();
            v["clean"] = link.check.clean().into();
            self.out.emit("net_done", v);
        }
    }

    /// Account for one received frame or datagram from `ip`.
    fn receive(&self, ip: Ipv4Addr, proto: Proto, buf: &[u8]) {
        let key = (ip, proto);
        let mut links = self.lock();
        let link = links.entry(key).or_default();
        if !link.configured && link.last_rx.is_none() {
            self.anomaly(&key, link, "unknown_peer", json!({}));
        }
        link.last_rx = Some(Instant::now());
        match wire::decode(buf) {
            Ok(m) => {
                if link.peer_id != Some(m.sender) {
                    if let Some(old) = link.peer_id {
                        self.anomaly(&key, link, "sender", json!({ "old": old, "new": m.sender, "seq": m.seq }));
                    }
                    link.peer_id = Some(m.sender);
                }
                let next_seq = link.check.next_seq;
                match link.check.accept(m.seq) {
                    Verdict::InOrder => {}
                    Verdict::Gap { first, last } => self.anomaly(
                        &key,
                        link,
                        "lost",
                        json!({ "first": first, "last": last, "count": last - first + 1, "seq": m.seq }),
                    ),
                    Verdict::Reordered => {
                        self.anomaly(&key, link, "reordered", json!({ "seq": m.seq, "next_seq": next_seq }))
                    }
                    Verdict::Duplicate => {
                        self.anomaly(&key, link, "dup", json!({ "seq": m.seq, "next_seq": next_seq }))
                    }
                }
            }
            Err(e) => {
                link.check.corrupt();
                let details = match e {
                    DecodeError::Length(len) => json!({ "reason": e.reason(), "len": len }),
                    DecodeError::Crc { seq, sender } | DecodeError::Payload { seq, sender } => {
                        json!({ "reason": e.reason(), "seq": seq, "sender": sender })
                    }
                };
                self.anomaly(&key, link, "corrupt", details);
            }
        }
        self.check_done(&key, link);
    }

    fn count_sent(&self, peer: Ipv4Addr, proto: Proto) {
        let key = (peer, proto);
        let mut links = self.lock();
        let link = links.entry(key).or_default();
        link.sent += 1;
        self.check_done(&key, link);
    }

    fn udp_receiver(&self, sock: UdpSocket) {
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => self.receive(ipv4(from.ip()), Proto::Udp, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.out.error(format!("udp recv: {e}"));
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn tcp_acceptor(self: Arc<Self>, listener: TcpListener) {
        // The current incoming connection of each peer. A peer connects
        // again only when its old connection broke, which this side may not
        // have noticed (the peer rebooted: nothing ever arrives on the old
        // one again): close the old one, so its reader reports it.
        let mut current: BTreeMap<Ipv4Addr, (TcpStream, Arc<AtomicBool>)> = BTreeMap::new();
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    let n = self.clone();
                    let ip = ipv4(from.ip());
                    let replaced = Arc::new(AtomicBool::new(false));
                    if let Ok(s) = stream.try_clone() {
                        if let Some((old, flag)) = current.insert(ip, (s, replaced.clone())) {
                            flag.store(true, Ordering::Release);
                            let _ = old.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    self.out.emit("net_connect", json!({ "peer": ip.to_string(), "proto": "tcp", "dir": "in" }));
                    let spawned = thread::Builder::new()
                        .name(format!("tcp-rx-{ip}"))
                        .spawn(move || n.tcp_reader(stream, ip, &replaced));
                    if let Err(e) = spawned {
                        self.out.error(format!("tcp reader thread: {e}"));
                    }
                }
                Err(e) => {
                    self.out.error(format!("tcp accept: {e}"));
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn tcp_reader(&self, mut stream: TcpStream, ip: Ipv4Addr, replaced: &AtomicBool) {
        let mut buf = [0u8; MSG_LEN];
        let mut error = loop {
            match stream.read_exact(&mut buf) {
                Ok(()) => self.receive(ip, Proto::Tcp, &buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break "closed".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        if replaced.load(Ordering::Acquire) {
            error = "replaced by a new connection from the peer".into();
        }
        self.out.emit("net_disconnect", json!({ "peer": ip.to_string(), "proto": "tcp", "dir": "in", "error": error }));
    }

    fn connect(&self, addr: SocketAddr) -> (TcpStream, u64) {
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            if let Ok(s) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                return (s, attempts);
            }
            thread::sleep(CONNECT_RETRY);
        }
    }

    fn tcp_sender(&self, idx: usize) {
        let peer = self.peers[idx];
        let addr = SocketAddr::from((peer, self.port));
        let mut seq = 0u64;
        loop {
            let (mut stream, attempts) = self.connect(addr);
            let _ = stream.set_nodelay(true);
            self.out.emit(
                "net_connect",
                json!({ "peer": peer.to_string(), "proto": "tcp", "dir": "out",
                        "attempts": attempts, "next_seq": seq }),
            );
            self.tcp_up[idx].store(true, Ordering::Release);
            let error = loop {
                if self.msgs > 0 && seq >= self.msgs {
                    // All sent: keep the connection open and idle, and learn
                    // from a read when it breaks (the peer never writes).
                    let mut b = [0u8; 1];
                    match stream.read(&mut b) {
                        Ok(0) => break "closed".to_string(),
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break e.to_string(),
                    }
                }
                match stream.write_all(&wire::encode(self.id, seq)) {
                    Ok(()) => {
                        seq += 1;
                        self.count_sent(peer, Proto::Tcp);
                    }
                    Err(e) => break e.to_string(),
                }
                if !self.interval.is_zero() {
                    thread::sleep(self.interval);
                }
            };
            self.out.emit(
                "net_disconnect",
                json!({ "peer": peer.to_string(), "proto": "tcp", "dir": "out",
                        "error": error, "next_seq": seq }),
            );
            thread::sleep(CONNECT_RETRY);
        }
    }

    fn udp_sender(&self, idx: usize, sock: UdpSocket) {
        let peer = self.peers[idx];
        let addr = SocketAddr::from((peer, self.port));
        while !self.tcp_up[idx].load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(50));
        }
        let mut seq = 0u64;
        let mut errors = 0u64;
        let mut pace = Pace::new(self.udp_rate, self.interval);
        while self.msgs == 0 || seq < self.msgs {
            match sock.send_to(&wire::encode(self.id, seq), addr) {
                Ok(_) => {
                    seq += 1;
                    self.count_sent(peer, Proto::Udp);
                }
                Err(e) => {
                    // Retried with the same sequence number; reported at
                    // powers of two so that a long outage does not flood.
                    errors += 1;
                    if errors.is_power_of_two() {
                        self.out.error(format!("udp send to {addr}: {e} ({errors} errors)"));
                    }
                }
            }
            pace.wait();
        }
    }

    /// Once a second: a `net` event for each link whose counters changed,
    /// and the grace check of `net_done`.
    pub fn report(&self) {
        let mut links = self.lock();
        for (key, link) in links.iter_mut() {
            self.check_done(key, link);
            let now = Self::counters(key, link);
            if link.reported.as_ref() != Some(&now) {
                self.out.emit("net", now.clone());
                link.reported = Some(now);
            }
        }
    }

    /// The guest's UDP counters (/proc/net/snmp): datagrams its kernel
    /// dropped for a full receive buffer or other errors, none of which a
    /// checkpoint causes.
    pub fn udp_drops() -> Option<Value> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
        let mut rows = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (names, values) = (rows.next()?, rows.next()?);
        let row: BTreeMap<&str, &str> = names.split_whitespace().zip(values.split_whitespace()).collect();
        let counter = |name: &str| row.get(name).and_then(|v| v.parse::<u64>().ok());
        Some(json!({ "in_errors": counter("InErrors")?, "rcvbuf_errors": counter("RcvbufErrors")? }))
    }

    /// Every configured link is done.
    pub fn all_done(&self) -> bool {
        self.lock().values().filter(|l| l.configured).all(|l| l.done)
    }

    /// Counters of every link, for the summaries.
    pub fn summary(&self) -> Value {
        let links = self.lock();
        Value::Array(
            links
                .iter()
                .map(|(key, link)| {
                    let mut v = Self::counters(key, link);
                    v["configured"] = link.configured.into();
                    v["done"] = link.done.into();
                    v
                })
                .collect(),
        )
    }
}

/// Raises `sock`'s receive buffer to `UDP_RCVBUF`, past the system's
/// limit when the probe may (root in the guest), else as far as it goes.
fn raise_rcvbuf(sock: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = UDP_RCVBUF;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int of the given length.
        let rc = unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, option, std::ptr::from_ref(&size).cast(), len)
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// The schedule of a paced sender: message `n` is due `n` periods after
/// the start, sent in bursts of `BURST`; one behind by more than
/// `MAX_CATCH_UP` starts anew.
struct Pace {
    period: Duration,
    /// The start of the schedule and the messages sent on it.
    start: Instant,
    sent: u32,
    /// Unpaced: a fixed pause after each message (none when zero).
    pause: Duration,
}

impl Pace {
    /// `rate` per second; at 0, a pause of `interval` after each message.
    fn new(rate: u64, interval: Duration) -> Pace {
        let period = 1_000_000_000u64.checked_div(rate).map_or(Duration::ZERO, Duration::from_nanos);
        Pace { period, start: Instant::now(), sent: 0, pause: interval }
    }

    /// Waits until the next message is due.
    fn wait(&mut self) {
        if self.period.is_zero() {
            if !self.pause.is_zero() {
                thread::sleep(self.pause);
            }
            return;
        }
        self.sent += 1;
        let due = self.start + self.period * self.sent;
        let now = Instant::now();
        if now > due + MAX_CATCH_UP || self.sent == u32::MAX {
            (self.start, self.sent) = (now, 0);
        } else if due > now + BURST {
            thread::sleep(due - now);
        }
    }
}
