// SPDX-License-Identifier: GPL-2.0-or-later
//! Spec mode: `mekha up|restart|down|status --spec FILE` (and
//! `mekha checkpoint --spec FILE`, in `ckpt_cmd`) for batch jobs that own
//! their VMs from start to end. VMs of this host are started here; those
//! of other hosts by the hosts' `mekha agent`s, each with its part of the
//! spec.

use std::path::Path;
use std::time::Duration;

use futures::future::join_all;
use mekha_ckpt_core::session::checkpoint::QueryArgs;
use mekha_ckpt_core::session::commands::QueryCheckpoint;
use mekha_ckpt_core::width::saturating_u64;
use serde_json::{json, Value};

use mekha_coordinator::agent::Request;
use mekha_coordinator::ckpt::{RestoreOptions, TimePolicy, DEFAULT_LEASE, DEFAULT_PROGRESS_TIMEOUT};
use mekha_coordinator::cluster;
use mekha_coordinator::launch;
use mekha_coordinator::spec::{HostSpec, Spec};
use mekha_coordinator::storage::{self, StorageReport};
use mekha_coordinator::transport::Reach;

use super::checkpoint::restore_vms;
use super::exit::{self, CommandFailure};
use super::key;

/// How long `down` and `restart` wait for QEMU to quit before killing it.
const QUIT_GRACE: Duration = Duration::from_secs(5);

fn load(path: &Path) -> Result<Spec, CommandFailure> {
    Spec::load(path).map_err(|e| CommandFailure::new(exit::USAGE, e))
}

fn failed(message: String) -> CommandFailure {
    CommandFailure::new(exit::FAILURE, message)
}

/// `mekha up`: the network, then every VM, on every host. If a host
/// cannot start its VMs, the VMs already started are stopped again.
pub async fn up(path: &Path, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    start_everywhere(&spec, false).await?;
    report_started(&spec, json, "up").await
}

/// `mekha restart`: every VM of the spec (running ones are stopped first)
/// started again waiting for its state, restored from the latest
/// committed checkpoint, and resumed together.
pub async fn restart(path: &Path, time: Option<TimePolicy>, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    let key = key::load(spec.key_file.as_deref())?;
    // Refuse before anything is stopped if there is nothing to restart.
    mekha_coordinator::ckpt::latest_checkpoint(&spec.checkpoint_dir, key.as_ref())?;
    stop_everywhere(&spec, false).await?;
    start_everywhere(&spec, true).await?;
    let vms = cluster::attach(&spec.qmp_endpoints(), &spec.reach()).await?;
    let options = RestoreOptions {
        paused: false,
        time: time.or(spec.restore.time.map(Into::into)).unwrap_or_default(),
        catch_up_ppm: spec.restore.catch_up_ppm,
        lag_ns: None,
        // The checkpoint's lease and progress timeout serve the restart.
        lease: spec.checkpoint.lease_ms.map_or(DEFAULT_LEASE, Duration::from_millis),
        progress_timeout: spec.checkpoint.progress_timeout_ms.map_or(DEFAULT_PROGRESS_TIMEOUT, Duration::from_millis),
        key,
    };
    restore_vms(&vms, &spec.checkpoint_dir, &options, json).await
}

/// `mekha down`: every VM quits (killed after a grace period); the network
/// `up` created goes. Checkpoints stay.
pub async fn down(path: &Path) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    stop_everywhere(&spec, true).await
}

/// Starts every host's part; on a failure, stops what did start.
async fn start_everywhere(spec: &Spec, incoming: bool) -> Result<(), CommandFailure> {
    let reach = spec.reach();
    let parts = spec.parts();
    let started = join_all(parts.iter().map(|(host, part)| start_part(&reach, *host, part, incoming))).await;
    let Some(failure) = combine(started.into_iter().filter_map(Result::err).collect()) else { return Ok(()) };
    let _ = stop_everywhere(spec, false).await;
    Err(CommandFailure::new(failure.code, format!("{} (the VMs that had started were stopped)", failure.message)))
}

/// Stops every host's part (and, with `network`, removes what `up` made
/// of its network); goes on past a host it cannot reach.
async fn stop_everywhere(spec: &Spec, network: bool) -> Result<(), CommandFailure> {
    let reach = spec.reach();
    let parts = spec.parts();
    let stopped = join_all(parts.iter().map(|(host, part)| stop_part(&reach, *host, part, network))).await;
    combine(stopped.into_iter().filter_map(Result::err).collect()).map_or(Ok(()), Err)
}

/// Several hosts' failures as one: unreachable if every one is.
fn combine(failures: Vec<CommandFailure>) -> Option<CommandFailure> {
    let code = if failures.iter().all(|f| f.code == exit::UNREACHABLE) { exit::UNREACHABLE } else { exit::FAILURE };
    let message = failures.into_iter().map(|f| f.message).collect::<Vec<_>>().join("; ");
    (!message.is_empty()).then(|| CommandFailure::new(code, message))
}

/// A request to host `host`'s agent.
async fn call_agent(reach: &Reach, host: &HostSpec, request: &Request) -> Result<Value, CommandFailure> {
    let fail = |code, e: String| CommandFailure::new(code, format!("host {}: {e}", host.name));
    let agent = reach.agent(&host.agent).map_err(|e| fail(exit::UNREACHABLE, e))?;
    agent.call(request).await.map_err(|e| {
        let code = if e.is_unreachable() { exit::UNREACHABLE } else { exit::FAILURE };
        fail(code, e.to_string())
    })
}

async fn start_part(reach: &Reach, host: Option<&HostSpec>, part: &Spec, incoming: bool) -> Result<(), CommandFailure> {
    match host {
        None => launch::start_all(part, incoming).await.map(drop).map_err(failed),
        Some(h) => call_agent(reach, h, &Request::Launch { spec: Box::new(part.clone()), incoming }).await.map(drop),
    }
}

async fn stop_part(reach: &Reach, host: Option<&HostSpec>, part: &Spec, network: bool) -> Result<(), CommandFailure> {
    match host {
        None => {
            launch::stop_all(part, QUIT_GRACE).await;
            if network {
                launch::remove_network(part);
            }
            Ok(())
        }
        Some(h) => {
            let grace_ms = saturating_u64(QUIT_GRACE.as_millis());
            call_agent(reach, h, &Request::Stop { spec: Box::new(part.clone()), grace_ms, network }).await.map(drop)
        }
    }
}

/// Every VM's pid on one host (`None`: not running), or why the host
/// cannot say.
async fn pids_part(reach: &Reach, host: Option<&HostSpec>, part: &Spec) -> Result<Vec<Option<i32>>, String> {
    match host {
        None => Ok(part.vms.iter().map(|vm| launch::running_pid(part, &vm.name)).collect()),
        Some(h) => {
            let request = Request::Status { spec: Box::new(part.clone()) };
            let pids = call_agent(reach, h, &request).await.map_err(|f| f.message)?;
            Ok(part.vms.iter().map(|vm| pids[&vm.name].as_i64().and_then(|p| i32::try_from(p).ok())).collect())
        }
    }
}

/// The checkpoint directory's storage as one host sees it.
async fn storage_part(reach: &Reach, host: Option<&HostSpec>, dir: &Path) -> Result<StorageReport, String> {
    match host {
        None => storage::probe(dir),
        Some(h) => {
            let report =
                call_agent(reach, h, &Request::Storage { dir: dir.to_owned() }).await.map_err(|f| f.message)?;
            serde_json::from_value(report).map_err(|e| format!("agent {}: {e}", h.agent))
        }
    }
}

/// `mekha status`: every VM's host, process, run state and latest
/// checkpoint activity; each host's view of the checkpoint storage; the
/// latest committed checkpoint.
pub async fn status(path: &Path, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    let reach = spec.reach();
    let mut vms = Vec::new();
    let mut storage = Vec::new();
    for (host, part) in spec.parts() {
        let host_name = host.map_or_else(storage::host_name, |h| h.name.clone());
        let pids = pids_part(&reach, host, &part).await;
        let report = storage_part(&reach, host, &spec.checkpoint_dir).await;
        storage.push(match report {
            Ok(r) => json!({ "host": host_name, "report": r }),
            Err(e) => json!({ "host": host_name, "error": e }),
        });
        for (i, vm) in part.vms.iter().enumerate() {
            let pid = pids.as_ref().ok().and_then(|p| p[i]);
            let (mut run_state, mut checkpoint) = (Value::Null, Value::Null);
            if pid.is_some() {
                // The whole spec's VM, which knows its host (a part's VMs
                // run "here", on theirs).
                let whole = spec.vms.iter().find(|v| v.name == vm.name).expect("a part's VM is the spec's");
                let endpoint = spec.qmp_endpoint(whole);
                if let Ok(attached) = cluster::attach(std::slice::from_ref(&endpoint), &reach).await {
                    let qmp = &attached[0].qmp;
                    run_state = qmp.status().await.map_or(Value::Null, |s| s.status.into());
                    checkpoint = qmp
                        .call::<QueryCheckpoint>(&QueryArgs::default())
                        .await
                        .map_or(Value::Null, |s| s.status.as_str().into());
                }
            }
            vms.push(json!({
                "name": vm.name, "host": host_name, "pid": pid, "state": run_state, "checkpoint": checkpoint,
                "error": pids.as_ref().err(),
            }));
        }
    }
    // Status reads what is there; a restart checks it under the key.
    let latest = mekha_coordinator::ckpt::latest_checkpoint(&spec.checkpoint_dir, None).ok().map(|(_, m)| m);
    if json {
        let doc = json!({ "spec": spec.name, "vms": vms, "storage": storage, "latest_checkpoint": latest });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
        return Ok(());
    }
    println!("cluster {} ({} VMs)", spec.name, spec.vms.len());
    for vm in &vms {
        let state = match (&vm["pid"], &vm["state"], &vm["error"]) {
            (_, _, Value::String(e)) => format!("unknown: {e}"),
            (Value::Null, _, _) => "not running".to_owned(),
            (pid, Value::String(s), _) => format!("{s} (pid {pid})"),
            (pid, _, _) => format!("not answering over QMP (pid {pid})"),
        };
        let ckpt = vm["checkpoint"].as_str().filter(|s| *s != "none").map(|s| format!(", last checkpoint {s}"));
        let name = vm["name"].as_str().unwrap_or("?");
        println!("  {name} on {}: {state}{}", vm["host"].as_str().unwrap_or("?"), ckpt.unwrap_or_default());
    }
    for s in &storage {
        let host = s["host"].as_str().unwrap_or("?");
        match serde_json::from_value::<StorageReport>(s["report"].clone()) {
            Ok(r) => println!(
                "  storage seen from {host}: {} ({}), {} MiB free of {} MiB",
                r.target,
                r.fs_type,
                r.free_bytes >> 20,
                r.total_bytes >> 20
            ),
            Err(_) => println!("  storage seen from {host}: unknown: {}", s["error"].as_str().unwrap_or("?")),
        }
    }
    match latest {
        Some(m) => println!("latest checkpoint: generation {} in {}", m.generation, spec.checkpoint_dir.display()),
        None => println!("no committed checkpoint in {}", spec.checkpoint_dir.display()),
    }
    Ok(())
}

async fn report_started(spec: &Spec, json: bool, what: &str) -> Result<(), CommandFailure> {
    let vms = cluster::attach(&spec.qmp_endpoints(), &spec.reach()).await?;
    if json {
        let doc: Vec<Value> = spec
            .vms
            .iter()
            .map(|vm| json!({ "name": vm.name, "host": vm.host, "qmp": spec.qmp_endpoint(vm) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "spec": spec.name, "vms": doc })).expect("JSON encodes"));
    } else {
        println!("{what}: cluster {} with {} VMs; state in {}", spec.name, vms.len(), spec.state_dir().display());
        for vm in &spec.vms {
            println!("  {}: QMP {}", vm.name, spec.qmp_endpoint(vm).display());
        }
    }
    Ok(())
}
