// SPDX-License-Identifier: GPL-2.0-or-later
//! What an agent does for whom: each request needs a client role (carried
//! in the client's certificate, see `tls::Role`) and may only name paths
//! the agent was told to serve.
//!
//! | request                              | role     | paths                                  |
//! |--------------------------------------|----------|----------------------------------------|
//! | `storage`, `part-check`              | monitor  | under a `--checkpoint-root`            |
//! | `status`                             | monitor  | state directory under a `--state-root` |
//! | `part-begin`, `part-seal`, `part-abort` | operator | under a `--checkpoint-root`         |
//! | `qmp`                                | operator | socket under a `--state-root`          |
//! | `stop`                               | admin    | state directory under a `--state-root` |
//! | `launch`                             | admin    | the same, and its QEMU one of `--qemu` |
//!
//! Roles include the ones below them (admin > operator > monitor); a
//! certificate without a mekha role is refused everything. Launching is
//! root on the host whatever the policy (QEMU's arguments can open any
//! file): give admin certificates as one gives root's ssh key. A path
//! must be absolute with no `..`; its existing part is resolved (symlinks
//! included) before it is compared with the roots, themselves resolved
//! when the agent starts.

use std::path::{Component, Path, PathBuf};

use super::Request;
use crate::tls::{Identity, Role};

/// The agent's side of authorization: where requests may reach.
#[derive(Debug, Clone)]
pub struct Policy {
    state_roots: Vec<PathBuf>,
    checkpoint_roots: Vec<PathBuf>,
    qemus: Vec<PathBuf>,
}

impl Policy {
    /// Roots must be absolute; they are resolved now if they exist (a
    /// root made later is compared as given).
    pub fn new(state_roots: &[PathBuf], checkpoint_roots: &[PathBuf], qemus: &[PathBuf]) -> Result<Policy, String> {
        let resolve = |roots: &[PathBuf], flag: &str| -> Result<Vec<PathBuf>, String> {
            if roots.is_empty() {
                return Err(format!("give {flag} DIR (repeat for several): where requests may reach"));
            }
            roots.iter().map(|r| resolved(r).map_err(|e| format!("{flag} {}: {e}", r.display()))).collect()
        };
        Ok(Policy {
            state_roots: resolve(state_roots, "--state-root")?,
            checkpoint_roots: resolve(checkpoint_roots, "--checkpoint-root")?,
            qemus: qemus.to_vec(),
        })
    }

    /// One line for the agent's log.
    pub fn describe(&self) -> String {
        let list = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        format!(
            "state roots {}; checkpoint roots {}; {}",
            list(&self.state_roots),
            list(&self.checkpoint_roots),
            if self.qemus.is_empty() {
                "launches no VMs".to_owned()
            } else {
                format!("launches {}", list(&self.qemus))
            }
        )
    }

    /// Whether `client` may have `request` done; the error names the
    /// operation, the client and why.
    pub fn authorize(&self, client: &Identity, request: &Request) -> Result<(), String> {
        let refuse = |why: String| Err(format!("{} refused to client {client}: {why}", operation(request)));
        let needed = required_role(request);
        match client.role {
            None => {
                let how = "`mekha tls client --role` issues one that does";
                return refuse(format!("its certificate carries no mekha role (needs {needed}; {how})"));
            }
            Some(role) if role < needed => return refuse(format!("needs role {needed}")),
            Some(_) => {}
        }
        let checked = match request {
            Request::Storage { dir }
            | Request::PartBegin { dir, .. }
            | Request::PartSeal { dir, .. }
            | Request::PartAbort { dir, .. }
            | Request::PartCheck { dir, .. } => within(dir, &self.checkpoint_roots, "--checkpoint-root"),
            Request::Qmp { socket } => within(socket, &self.state_roots, "--state-root"),
            Request::Status { spec } | Request::Stop { spec, .. } => match &spec.state_dir {
                Some(dir) => within(dir, &self.state_roots, "--state-root"),
                None => Err("the spec has no state_dir".to_owned()),
            },
            Request::Launch { spec, .. } => match &spec.state_dir {
                None => Err("the spec has no state_dir".to_owned()),
                Some(_) if self.qemus.is_empty() => Err("this agent launches no VMs (started without --qemu)".into()),
                Some(_) if !self.qemus.contains(&spec.qemu) => Err(format!(
                    "QEMU {} is not one this agent runs (its --qemu: {})",
                    spec.qemu.display(),
                    self.qemus.iter().map(|q| q.display().to_string()).collect::<Vec<_>>().join(", ")
                )),
                Some(dir) => within(dir, &self.state_roots, "--state-root"),
            },
        };
        checked.or_else(refuse)
    }
}

/// The least role a request needs.
pub fn required_role(request: &Request) -> Role {
    match request {
        Request::Storage { .. } | Request::Status { .. } | Request::PartCheck { .. } => Role::Monitor,
        Request::Qmp { .. } | Request::PartBegin { .. } | Request::PartSeal { .. } | Request::PartAbort { .. } => {
            Role::Operator
        }
        Request::Launch { .. } | Request::Stop { .. } => Role::Admin,
    }
}

/// A request's operation, as the protocol names it.
pub fn operation(request: &Request) -> &'static str {
    match request {
        Request::Storage { .. } => "storage",
        Request::Launch { .. } => "launch",
        Request::Stop { .. } => "stop",
        Request::Status { .. } => "status",
        Request::Qmp { .. } => "qmp",
        Request::PartBegin { .. } => "part-begin",
        Request::PartSeal { .. } => "part-seal",
        Request::PartAbort { .. } => "part-abort",
        Request::PartCheck { .. } => "part-check",
    }
}

/// `path` if it is absolute without `..` or `.`, with its longest existing
/// ancestor resolved.
fn resolved(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err("has '..' or '.' in it".into());
    }
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => return Ok(rest.iter().rev().fold(real, |p, c| p.join(c))),
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return Ok(path.to_owned()),
            },
        }
    }
}

fn within(path: &Path, roots: &[PathBuf], flag: &str) -> Result<(), String> {
    let real = resolved(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if roots.iter().any(|root| real.starts_with(root)) {
        return Ok(());
    }
    let roots = roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(format!("{} is outside this agent's {flag} ({roots})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    fn client(role: Option<Role>) -> Identity {
        Identity {
            name: "test client".into(),
            serial: "1f".into(),
            role,
            hosts: Vec::new(),
            not_before: 0,
            not_after: i64::MAX,
        }
    }

    fn spec(state: &Path, qemu: &str) -> Box<Spec> {
        let text = format!(
            "name = \"job\"\ncheckpoint_dir = \"/c\"\nstate_dir = {state:?}\nqemu = {qemu:?}\n\
             [[vm]]\nname = \"node0\"\nargs = []\n"
        );
        let mut spec: Spec = toml::from_str(&text).unwrap();
        spec.state_dir = Some(state.to_owned());
        Box::new(spec)
    }

    #[test]
    fn each_role_gets_what_it_needs_and_no_more() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, ckpt) = (tmp.path().join("state"), tmp.path().join("ckpt"));
        let policy = Policy::new(
            std::slice::from_ref(&state),
            std::slice::from_ref(&ckpt),
            &["/usr/bin/qemu-system-x86_64".into()],
        )
        .unwrap();
        let requests = [
            Request::Storage { dir: ckpt.clone() },
            Request::Status { spec: spec(&state.join("h0"), "/usr/bin/qemu-system-x86_64") },
            Request::PartCheck { dir: ckpt.clone(), generation: 1, vms: Vec::new() },
            Request::Qmp { socket: state.join("h0/node0.qmp") },
            Request::PartBegin {
                dir: ckpt.clone(),
                generation: 2,
                keep: vec![],
                committer: "c".into(),
                cluster: "x".into(),
            },
            Request::PartSeal { dir: ckpt.clone(), generation: 2, vms: vec![] },
            Request::PartAbort { dir: ckpt.clone(), generation: 2 },
            Request::Stop { spec: spec(&state.join("h0"), "/usr/bin/qemu-system-x86_64"), grace_ms: 0, network: false },
            Request::Launch { spec: spec(&state.join("h0"), "/usr/bin/qemu-system-x86_64"), incoming: false },
        ];
        // How many of the requests above (in order) each role may make.
        for (role, allowed) in [(Role::Monitor, 3), (Role::Operator, 7), (Role::Admin, 9)] {
            for (i, request) in requests.iter().enumerate() {
                let verdict = policy.authorize(&client(Some(role)), request);
                assert_eq!(verdict.is_ok(), i < allowed, "{role} {}: {verdict:?}", operation(request));
                if let Err(e) = verdict {
                    assert!(e.starts_with(operation(request)) && e.contains("test client") && e.contains("1f"), "{e}");
                    assert!(e.contains(&format!("needs role {}", required_role(request))), "{e}");
                }
            }
        }
        let e = policy.authorize(&client(None), &requests[0]).unwrap_err();
        assert!(e.contains("no mekha role"), "{e}");
    }

    #[test]
    fn paths_outside_the_roots_are_refused_even_to_admins() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, ckpt) = (tmp.path().join("state"), tmp.path().join("ckpt"));
        std::fs::create_dir_all(&state).unwrap();
        let qemu = "/usr/bin/qemu-system-x86_64";
        let policy = Policy::new(std::slice::from_ref(&state), std::slice::from_ref(&ckpt), &[qemu.into()]).unwrap();
        let admin = client(Some(Role::Admin));
        // A symlink inside a root that leads out of it.
        std::os::unix::fs::symlink("/etc", state.join("out")).unwrap();
        for (request, why) in [
            (Request::Storage { dir: "/etc".into() }, "outside"),
            (Request::Storage { dir: state.clone() }, "--checkpoint-root"),
            (Request::Storage { dir: ckpt.join("../state") }, "'..'"),
            (Request::Storage { dir: "ckpt".into() }, "absolute"),
            (Request::Qmp { socket: "/run/libvirt/virtlogd-sock".into() }, "outside"),
            (Request::Qmp { socket: state.join("out/x.qmp") }, "outside"),
            (Request::Qmp { socket: ckpt.join("x.qmp") }, "--state-root"),
            (Request::Launch { spec: spec(Path::new("/etc/cron.d"), qemu), incoming: false }, "outside"),
            (Request::Launch { spec: spec(&state, "/bin/sh"), incoming: false }, "not one this agent runs"),
            (Request::Stop { spec: spec(Path::new("/"), qemu), grace_ms: 0, network: false }, "outside"),
        ] {
            let e = policy.authorize(&admin, &request).unwrap_err();
            assert!(e.contains(why), "{}: {e}", operation(&request));
        }
        let mut no_state = spec(&state, qemu);
        no_state.state_dir = None;
        let e = policy.authorize(&admin, &Request::Status { spec: no_state }).unwrap_err();
        assert!(e.contains("no state_dir"), "{e}");
        let no_launch = Policy::new(std::slice::from_ref(&state), &[ckpt], &[]).unwrap();
        let e =
            no_launch.authorize(&admin, &Request::Launch { spec: spec(&state, qemu), incoming: false }).unwrap_err();
        assert!(e.contains("launches no VMs"), "{e}");
        assert!(Policy::new(&[], std::slice::from_ref(&state), &[]).unwrap_err().contains("--state-root"));
        assert!(Policy::new(&["rel".into()], &[state], &[]).unwrap_err().contains("absolute"));
    }
}
