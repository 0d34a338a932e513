// SPDX-License-Identifier: GPL-2.0-or-later
//! The probe run on the host with `--cmdline`: it talks to itself over
//! loopback (its own address as its only peer) and prints to stdout.

use std::io::{BufRead, BufReader, Lines};
use std::net::{TcpListener, UdpSocket};
use std::process::{ChildStdout, Command, Stdio};

use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_mekha-probe");

/// A port free for both TCP and UDP on loopback, at least right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

fn events(output: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(output)
        .lines()
        .map(|l| {
            let json = l.strip_prefix("@probe ").unwrap_or_else(|| panic!("not a probe line: {l:?}"));
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l:?}"))
        })
        .collect()
}

#[test]
fn talks_to_itself_and_finishes() {
    let cmdline = format!(
        "console=ttyS0 mekha.id=5 mekha.ip=10.0.0.1/24 probe.compute=200000 probe.compute_chunk=50000 \
         probe.mem=4 probe.peers=127.0.0.1 probe.port={} probe.msgs=30 probe.msg_interval_ms=1 \
         probe.clock_ms=100 probe.duration=20",
        free_port()
    );
    let mut child = Command::new(PROBE).args(["--cmdline", &cmdline]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("\"ev\":\"done\"");
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let evs = events((lines.join("\n") + "\n").as_bytes());

    for e in &evs {
        assert_eq!(e["id"], 5, "{e}");
        assert!(e["mono_ns"].as_u64().is_some(), "{e}");
    }
    assert_eq!(evs[0]["ev"], "start");
    assert_eq!(evs[0]["config"]["msgs"], 30);
    let names: Vec<&str> = evs.iter().map(|e| e["ev"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|&&n| n == "compute").count(), 4);
    for n in ["clock", "compute_done", "net_connect", "net_done", "done"] {
        assert!(names.contains(&n), "no {n} event in {names:?}");
    }
    assert!(!names.contains(&"net_anomaly"), "{names:?}");

    let done = evs.last().unwrap();
    assert_eq!(done["ev"], "done");
    // Pinned, computed independently of the probe.
    assert_eq!(done["compute"]["checksum"], "8f6ec6fb43911a7d");
    assert_eq!(done["compute"]["steps"], 200000);
    let net = done["net"].as_array().unwrap();
    assert_eq!(net.len(), 2);
    for (link, proto) in net.iter().zip(["tcp", "udp"]) {
        assert_eq!(link["peer"], "127.0.0.1");
        assert_eq!(link["proto"], proto);
        assert_eq!(link["peer_id"], 5);
        for (k, v) in [("sent", 30), ("received", 30), ("next_seq", 30), ("lost", 0), ("dup", 0)] {
            assert_eq!(link[k], v, "{k} in {link}");
        }
        assert_eq!(link["done"], true);
    }
}

#[test]
fn duration_ends_with_exit() {
    let out = Command::new(PROBE)
        .args(["--cmdline", &format!("probe.duration=1 probe.clock_ms=300 probe.port={}", free_port())])
        .output()
        .unwrap();
    assert!(out.status.success());
    let evs = events(&out.stdout);
    let names: Vec<&str> = evs.iter().map(|e| e["ev"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"exit"));
    assert!(names.iter().filter(|&&n| n == "clock").count() >= 3, "{names:?}");
    // Nothing bounded was asked for: no `done`.
    assert!(!names.contains(&"done"));
    let exit = evs.last().unwrap();
    assert_eq!(exit["code"], 0);
    assert_eq!(exit["compute"], Value::Null);
}

#[test]
fn unknown_key_exits_2() {
    let out = Command::new(PROBE).args(["--cmdline", "mekha.id=9 probe.mem=1 probe.memory=1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let evs = events(&out.stdout);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["ev"], "error");
    assert_eq!(evs[0]["id"], 9);
    assert!(evs[0]["message"].as_str().unwrap().contains("probe.memory"));
    assert_eq!(evs[1]["ev"], "exit");
    assert_eq!(evs[1]["code"], 2);
}

/// The wire format, written down again from the contract (src/wire.rs):
/// u64 seq, u32 sender, 40 bytes of splitmix64 output seeded with
/// (sender << 48) ^ seq, CRC-32 of the 52 bytes before it; little-endian.
fn message(sender: u32, seq: u64) -> Vec<u8> {
    fn splitmix64(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&sender.to_le_bytes());
    let mut x = (u64::from(sender) << 48) ^ seq;
    for _ in 0..5 {
        x = splitmix64(x);
        m.extend_from_slice(&x.to_le_bytes());
    }
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    m
}

fn next_event(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = lines.next().expect("probe output ended").unwrap();
    events(line.as_bytes()).remove(0)
}

#[test]
fn receive_path_reports_anomalies() {
    let port = free_port();
    let mut child = Command::new(PROBE)
        .args(["--cmdline", &format!("mekha.id=1 probe.port={port} probe.clock_ms=0 probe.duration=20")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_event(&mut lines)["ev"], "start"); // bound from here on

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |m: &[u8]| {
        sock.send_to(m, ("127.0.0.1", port)).unwrap();
    };
    send(&message(4, 0));
    send(&message(4, 1));
    send(&message(4, 1)); // dup
    send(&message(4, 4)); // 2 and 3 lost
    send(&message(4, 2)); // late: reordered
    let mut bad = message(4, 5);
    bad[20] ^= 1;
    send(&bad); // corrupt
    send(&message(4, 5)[..50]); // short

    let mut anomalies = Vec::new();
    let summary = loop {
        let e = next_event(&mut lines);
        match e["ev"].as_str().unwrap() {
            "net_anomaly" => anomalies.push(e),
            "net" => break e,
            other => panic!("unexpected {other}: {e}"),
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let kinds: Vec<&str> = anomalies.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["unknown_peer", "dup", "lost", "reordered", "corrupt", "corrupt"]);
    for a in &anomalies {
        assert_eq!(a["peer"], "127.0.0.1");
        assert_eq!(a["proto"], "udp");
    }
    assert_eq!(anomalies[1]["seq"], 1);
    assert_eq!(
        (&anomalies[2]["first"], &anomalies[2]["last"], &anomalies[2]["count"]),
        (&2.into(), &3.into(), &2.into())
    );
    assert_eq!(anomalies[3]["seq"], 2);
    assert_eq!(anomalies[4]["reason"], "crc");
    assert_eq!(anomalies[5]["reason"], "length");
    assert_eq!(summary["peer_id"], 4);
    for (k, v) in
        [("received", 5), ("next_seq", 5), ("lost", 1), ("dup", 1), ("reordered", 1), ("corrupt", 2), ("sent", 0)]
    {
        assert_eq!(summary[k], v, "{k} in {summary}");
    }
}
