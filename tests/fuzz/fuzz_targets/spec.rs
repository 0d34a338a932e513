// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster spec file, loaded as `mekha up` loads it (`Spec::load`: TOML,
//! paths, `check`). A spec it accepts gives each host a part that the
//! host's agent accepts in turn, and keeps every VM's files in its state
//! directory.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mekha_coordinator::agent::Request;
use mekha_coordinator::qmp::json_line;
use mekha_coordinator::spec::Spec;
use mekha_fuzz::scratch;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(scratch::temp_dir);

fuzz_target!(|data: &[u8]| {
    let path = DIR.path().join("job.toml");
    std::fs::write(&path, data).unwrap();
    let Ok(spec) = Spec::load(&path) else { return };
    assert_eq!(spec.qmp_endpoints().len(), spec.vms.len());
    for (_, part) in spec.parts() {
        part.check().expect("a host's part passes the check");
        for vm in &part.vms {
            let socket = part.qmp_path(&vm.name);
            assert_eq!(socket.parent(), Some(part.state_dir()), "{} leaves the state directory", vm.name);
        }
        let launch = Request::Launch { spec: Box::new(part), incoming: false };
        Request::from_line(&json_line(&launch)).expect("the agent reads the part it is sent");
    }
});
