// SPDX-License-Identifier: GPL-2.0-or-later
//! Spec mode: `mekha up|restart|down|status --spec FILE` (and
//! `mekha checkpoint --spec FILE`, in `ckpt_cmd`) for batch jobs that own
//! their VMs from start to end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::ckpt::{RestoreOptions, TimePolicy};
use crate::ckpt_cmd::restore_vms;
use crate::cluster;
use crate::exit::{self, CommandFailure};
use crate::launch;
use crate::qmp::Qmp;
use crate::spec::Spec;

/// How long `down` and `restart` wait for QEMU to quit before killing it.
const QUIT_GRACE: Duration = Duration::from_secs(5);

fn load(path: &Path) -> Result<Spec, CommandFailure> {
    Spec::load(path).map_err(|e| CommandFailure::new(exit::USAGE, e))
}

fn failed(message: String) -> CommandFailure {
    CommandFailure::new(exit::FAILURE, message)
}

/// `mekha up`: the network, then every VM.
pub async fn up(path: &Path, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    launch::start_all(&spec, false).await.map_err(failed)?;
    report_started(&spec, json, "up").await
}

/// `mekha restart`: every VM of the spec (running ones are stopped first)
/// started again waiting for its state, restored from the latest
/// committed checkpoint, and resumed together.
pub async fn restart(path: &Path, time: Option<TimePolicy>, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    // Refuse before anything is stopped if there is nothing to restart.
    crate::ckpt::latest_checkpoint(&spec.checkpoint_dir)?;
    launch::stop_all(&spec, QUIT_GRACE).await;
    launch::start_all(&spec, true).await.map_err(failed)?;
    let socks: Vec<PathBuf> = spec.vms.iter().map(|vm| spec.qmp_path(&vm.name)).collect();
    let vms = cluster::attach(&socks, &[]).await?;
    let options = RestoreOptions {
        paused: false,
        time: time.or(spec.restore.time.map(Into::into)).unwrap_or_default(),
        catch_up_ppm: spec.restore.catch_up_ppm,
        lag_ns: None,
    };
    restore_vms(&vms, &spec.checkpoint_dir, &options, json).await
}

/// `mekha down`: every VM quits (killed after a grace period); the network
/// `up` created goes. Checkpoints stay.
pub async fn down(path: &Path) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    launch::stop_all(&spec, QUIT_GRACE).await;
    launch::remove_network(&spec);
    Ok(())
}

/// `mekha status`: every VM's process, run state and latest checkpoint
/// activity, and the latest committed checkpoint.
pub async fn status(path: &Path, json: bool) -> Result<(), CommandFailure> {
    let spec = load(path)?;
    let mut vms = Vec::new();
    for vm in &spec.vms {
        let pid = launch::running_pid(&spec, &vm.name);
        let (run_state, checkpoint) = match pid {
            Some(_) => match Qmp::connect(spec.qmp_path(&vm.name)).await {
                Ok(qmp) => (
                    qmp.execute("query-status", Value::Null).await.ok().map(|s| s["status"].clone()),
                    qmp.execute_mekha("query-checkpoint", Value::Null).await.ok().map(|s| s["status"].clone()),
                ),
                Err(_) => (None, None),
            },
            None => (None, None),
        };
        vms.push(json!({ "name": vm.name, "pid": pid, "state": run_state, "checkpoint": checkpoint }));
    }
    let latest = crate::ckpt::latest_checkpoint(&spec.checkpoint_dir).ok().map(|(_, m)| m);
    if json {
        let doc = json!({ "spec": spec.name, "vms": vms, "latest_checkpoint": latest });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
        return Ok(());
    }
    println!("cluster {} ({} VMs)", spec.name, spec.vms.len());
    for vm in &vms {
        let state = match (&vm["pid"], &vm["state"]) {
            (Value::Null, _) => "not running".to_owned(),
            (pid, Value::String(s)) => format!("{s} (pid {pid})"),
            (pid, _) => format!("not answering over QMP (pid {pid})"),
        };
        let ckpt = vm["checkpoint"].as_str().filter(|s| *s != "none").map(|s| format!(", last checkpoint {s}"));
        println!("  {}: {state}{}", vm["name"].as_str().unwrap_or("?"), ckpt.unwrap_or_default());
    }
    match latest {
        Some(m) => println!("latest checkpoint: generation {} in {}", m.generation, spec.checkpoint_dir.display()),
        None => println!("no committed checkpoint in {}", spec.checkpoint_dir.display()),
    }
    Ok(())
}

async fn report_started(spec: &Spec, json: bool, what: &str) -> Result<(), CommandFailure> {
    let socks: Vec<PathBuf> = spec.vms.iter().map(|vm| spec.qmp_path(&vm.name)).collect();
    let vms = cluster::attach(&socks, &[]).await?;
    if json {
        let doc: Vec<Value> = spec
            .vms
            .iter()
            .map(|vm| json!({ "name": vm.name, "qmp": spec.qmp_path(&vm.name), "pid": launch::running_pid(spec, &vm.name) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "spec": spec.name, "vms": doc })).expect("JSON encodes"));
    } else {
        println!("{what}: cluster {} with {} VMs; state in {}", spec.name, vms.len(), spec.state_dir().display());
        for vm in &vms {
            println!("  {}: QMP {}", vm.name, spec.qmp_path(&vm.name).display());
        }
    }
    Ok(())
}
