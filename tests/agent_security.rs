// SPDX-License-Identifier: GPL-2.0-or-later
//! A real `mekha agent` on loopback with certificates from `mekha tls`:
//! each request is authorized by the client certificate's role and the
//! agent's roots, a spec sent straight over the wire is checked, a client
//! revoked while the agent runs is refused at its next handshake while
//! another goes on, a revoked agent is refused by the coordinator, and
//! refusals name the operation and the client in the agent's log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mekha_coordinator::agent::{AgentClient, AgentError, Request};
use mekha_coordinator::spec::Spec;
use mekha_coordinator::tls;
use serde_json::json;

/// A `mekha agent` process, killed on drop.
struct Agent {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(mekha: &Path, tls_dir: &Path, policy: &[&str], log: PathBuf) -> Agent {
        // A port free now; the agent binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(mekha)
            .args(["agent", "--listen", &address, "--tls-dir"])
            .arg(tls_dir)
            .args(policy)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Agent { child, address, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&agent.address).is_err() {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("mekha agent exited ({status}): {}", agent.log());
            }
            assert!(Instant::now() < deadline, "mekha agent does not listen: {}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self, bundle: &Path) -> AgentClient {
        AgentClient::new(&self.address, tls::client_config(bundle).unwrap()).unwrap()
    }
}

fn mekha_ok(mekha: &Path, args: &[&str]) -> String {
    let out = Command::new(mekha).args(args).output().unwrap();
    assert!(out.status.success(), "mekha {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn spec(state_dir: &Path, qemu: &Path, vm: &str) -> Box<Spec> {
    let spec = json!({
        "name": "job",
        "checkpoint_dir": "/nowhere",
        "state_dir": state_dir,
        "qemu": qemu,
        "vm": [{ "name": vm, "args": [] }],
    });
    Box::new(serde_json::from_value(spec).unwrap())
}

fn refused(result: Result<serde_json::Value, AgentError>) -> String {
    match result {
        Err(e @ AgentError::Failed { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_operation_needs_its_role_and_paths_under_the_agents_roots() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("agent-roles");
    let (ca, tls_dir) = (dir.join("ca"), dir.join("tls"));
    let arg = |p: &Path| p.to_str().unwrap().to_owned();
    mekha_ok(
        &artifacts.mekha,
        &["tls", "init", "--ca-dir", &arg(&ca), "--dir", &arg(&tls_dir), "--agent", "127.0.0.1"],
    );
    let monitor = dir.join("monitor");
    let operator = dir.join("operator");
    for (bundle, role) in [(&monitor, "monitor"), (&operator, "operator")] {
        let (name, out) = (format!("nightly {role}"), arg(bundle));
        mekha_ok(
            &artifacts.mekha,
            &["tls", "client", "--ca-dir", &arg(&ca), "--dir", &out, "--name", &name, "--role", role],
        );
    }
    let (state, ckpt) = (dir.join("state"), dir.join("ckpt"));
    std::fs::create_dir_all(&ckpt).unwrap();
    let agent = Agent::start(
        &artifacts.mekha,
        &tls_dir.join("127.0.0.1"),
        &["--state-root", &arg(&state), "--checkpoint-root", &arg(&ckpt), "--qemu", &arg(&artifacts.qemu)],
        dir.join("agent.log"),
    );
    let (admin, monitor, operator) = (agent.client(&tls_dir), agent.client(&monitor), agent.client(&operator));

    // A monitor reads.
    let report = monitor.call(&Request::Storage { dir: ckpt.clone() }).await.unwrap();
    assert!(report["free_bytes"].as_u64().unwrap() > 0, "{report}");
    let pids = monitor.call(&Request::Status { spec: spec(&state, &artifacts.qemu, "node0") }).await.unwrap();
    assert_eq!(pids, json!({ "node0": null }));
    // ... and no more, whatever path it names.
    let launch = Request::Launch { spec: spec(&state, &artifacts.qemu, "node0"), incoming: false };
    let e = refused(monitor.call(&launch).await);
    assert!(e.contains("launch refused to client \"nightly monitor\"") && e.contains("needs role admin"), "{e}");
    let e = refused(monitor.call(&Request::Qmp { socket: state.join("node0.qmp") }).await.map(drop).map(|_| json!(0)));
    assert!(e.contains("qmp refused") && e.contains("needs role operator"), "{e}");
    let seal = Request::PartSeal { dir: ckpt.clone(), generation: 1, vms: Vec::new() };
    assert!(refused(monitor.call(&seal).await).contains("part-seal refused"));
    let stop = Request::Stop { spec: spec(&state, &artifacts.qemu, "node0"), grace_ms: 0, network: false };
    assert!(refused(monitor.call(&stop).await).contains("needs role admin"));
    // An operator reaches QMP sockets under the state root only (none
    // runs here: refused by the socket, not by the policy).
    let e = refused(operator.open_qmp(&state.join("node0.qmp")).await.map(|_| json!(0)));
    assert!(e.contains("cannot connect to QMP socket"), "{e}");
    let e = refused(operator.open_qmp(Path::new("/run/systemd/private")).await.map(|_| json!(0)));
    assert!(e.contains("qmp refused") && e.contains("outside this agent's --state-root"), "{e}");
    assert!(refused(operator.call(&launch).await).contains("needs role admin"));

    // An admin too stays under the roots, runs only the QEMU it was given,
    // and a spec from the wire is checked as a spec file is.
    let e = refused(admin.call(&Request::Storage { dir: "/etc".into() }).await);
    assert!(e.contains("storage refused") && e.contains("--checkpoint-root"), "{e}");
    let shell = Request::Launch { spec: spec(&state, Path::new("/bin/sh"), "node0"), incoming: false };
    assert!(refused(admin.call(&shell).await).contains("not one this agent runs"));
    let escape = Request::Launch { spec: spec(&state, &artifacts.qemu, "../../../etc/cron.d/x"), incoming: false };
    let e = refused(admin.call(&escape).await);
    assert!(e.contains("VM name"), "{e}");
    assert!(!state.exists(), "a refused launch created the state directory");
    admin.call(&Request::Storage { dir: ckpt.clone() }).await.unwrap();

    let log = agent.log();
    for line in ["launch refused to client \"nightly monitor\"", "qmp refused to client \"nightly operator\""] {
        assert!(log.contains(line), "the agent's log lacks {line:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_revoked_while_the_agent_runs_is_refused_the_other_goes_on() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("agent-revoke");
    let (ca, tls_dir) = (dir.join("ca"), dir.join("tls"));
    let arg = |p: &Path| p.to_str().unwrap().to_owned();
    mekha_ok(
        &artifacts.mekha,
        &["tls", "init", "--ca-dir", &arg(&ca), "--dir", &arg(&tls_dir), "--agent", "127.0.0.1"],
    );
    let (one, two) = (dir.join("one"), dir.join("two"));
    for (bundle, name) in [(&one, "one"), (&two, "two")] {
        mekha_ok(
            &artifacts.mekha,
            &["tls", "client", "--ca-dir", &arg(&ca), "--dir", &arg(bundle), "--name", name, "--role", "operator"],
        );
    }
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let agent = Agent::start(
        &artifacts.mekha,
        &tls_dir.join("127.0.0.1"),
        &["--state-root", &arg(&dir.join("state")), "--checkpoint-root", &arg(&ckpt)],
        dir.join("agent.log"),
    );
    let storage = Request::Storage { dir: ckpt.clone() };
    for bundle in [&one, &two] {
        agent.client(bundle).call(&storage).await.unwrap();
    }

    // Revoked by its certificate file; --dir hands the new CRL to the
    // bundles made there, the agent's among them, as a copy to the host
    // would.
    let said = mekha_ok(
        &artifacts.mekha,
        &["tls", "revoke", "--ca-dir", &arg(&ca), "--dir", &arg(&tls_dir), &arg(&one.join(tls::CLIENT))],
    );
    let serial = tls::Identity::from_pem_file(&one.join(tls::CLIENT)).unwrap().serial;
    assert!(said.contains(&serial), "{said}");

    let e = agent.client(&one).call(&storage).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    agent.client(&two).call(&storage).await.unwrap();
    let log = agent.log();
    assert!(log.contains("reloaded") && log.contains("refused"), "{log}");
    eprintln!("a revoked client: {e}");

    // By serial, as well: then `two` is refused too.
    let two_serial = tls::Identity::from_pem_file(&two.join(tls::CLIENT)).unwrap().serial;
    mekha_ok(&artifacts.mekha, &["tls", "revoke", "--ca-dir", &arg(&ca), "--dir", &arg(&tls_dir), &two_serial]);
    let e = agent.client(&two).call(&storage).await.unwrap_err();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");

    // The coordinator checks the agent's certificate against its own
    // copy of the CRL: a revoked agent is not trusted.
    agent.client(&tls_dir).call(&storage).await.unwrap();
    let agent_cert = arg(&tls_dir.join("127.0.0.1").join(tls::AGENT));
    mekha_ok(&artifacts.mekha, &["tls", "revoke", "--ca-dir", &arg(&ca), "--dir", &arg(&tls_dir), &agent_cert]);
    let e = agent.client(&tls_dir).call(&storage).await.unwrap_err();
    assert!(e.is_unreachable() && e.to_string().contains("Revoked"), "{e}");
}
