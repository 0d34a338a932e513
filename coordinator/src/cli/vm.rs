// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha info` and `mekha time`: what one VM's library reports.

use std::path::PathBuf;

use mekha_ckpt_core::session::commands::{QueryTime, SetTime};
use mekha_ckpt_core::session::time::SetArgs;
use mekha_ckpt_core::session::Empty;
use mekha_coordinator::ckpt::TimePolicy;
use mekha_coordinator::cluster;
use mekha_coordinator::info;
use mekha_coordinator::transport::Reach;

use super::exit::CommandFailure;

type Failure = CommandFailure;

pub async fn time(sock: PathBuf, policy: Option<TimePolicy>, ppm: Option<u32>, json: bool) -> Result<(), Failure> {
    let (qmp, _, _tunnel) = cluster::open(&sock, &Reach::default()).await?;
    if let Some(policy) = policy {
        qmp.call::<SetTime>(&SetArgs { policy: policy.into(), catch_up_ppm: ppm }).await?;
    }
    let t = qmp.call::<QueryTime>(&Empty {}).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t).expect("JSON encodes"));
        return Ok(());
    }
    let s = |ns: i64| ns as f64 / 1e9;
    let catching = match t.catch_up_ppm.filter(|_| t.catching_up) {
        Some(ppm) => format!(", catching up at {ppm} ppm"),
        None => String::new(),
    };
    println!(
        "{}: time policy {}, guest wall clock {:.3} s behind the host{catching}; VM clock {:.3} s (catch-up moved it {:.3} s)",
        sock.display(),
        t.policy.as_str(),
        s(t.lag_ns),
        s(t.virtual_ns),
        s(t.advanced_ns),
    );
    Ok(())
}

pub async fn info(sockets: Vec<PathBuf>, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    for sock in &sockets {
        let (qmp, _, _tunnel) = cluster::open(sock, &Reach::default()).await?;
        let info = info::query(&qmp)
            .await
            .map_err(Failure::from)
            .map_err(|f| Failure { message: format!("{}: {}", sock.display(), f.message), ..f })?;
        all.push((sock, info));
    }
    if json {
        let doc: Vec<_> = all.iter().map(|(sock, info)| serde_json::json!({ "qmp": sock, "info": info })).collect();
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
        return Ok(());
    }
    for (sock, info) in all {
        println!(
            "{}: VM {} ({}, {}), QEMU {}, mekha {} ({}), {} MiB RAM in {} blocks, capabilities: {}",
            sock.display(),
            info.vm_name.as_deref().unwrap_or("(unnamed)"),
            info.machine,
            info.accelerator,
            info.qemu_version,
            info.version,
            info.build_id,
            info.ram_size >> 20,
            info.ram_blocks.len(),
            if info.capabilities.is_empty() { "none".to_owned() } else { info.capabilities.join(", ") },
        );
    }
    Ok(())
}
