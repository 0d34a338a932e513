// SPDX-License-Identifier: GPL-2.0-or-later
//! The QMP contract held against the QEMU that serves it: the Rust types
//! of every mekha command's arguments, replies, statuses and events
//! (`mekha_ckpt_core::session`, which the library parses and answers
//! with and the coordinator reads) against the QAPI schema the patched
//! QEMU reports (`query-qmp-schema`). A field added to one side only,
//! renamed, or made optional in the schema but always expected in Rust,
//! fails here before it fails a user.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mekha_ckpt_core::session::{checkpoint, restore};
use mekha_ckpt_core::vtime::TimePolicy;
use mekha_coordinator::qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_aux::serde_introspection::serde_introspect;
use serde_json::Value;

mod common;

/// The QAPI schema as `query-qmp-schema` gives it, by (masked) name.
struct Schema(BTreeMap<String, Value>);

impl Schema {
    fn entity(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or_else(|| panic!("the schema has no {name}"))
    }

    /// A command's or an event's type `key` (arg-type, ret-type), resolved.
    fn type_of(&self, entity: &str, key: &str) -> &Value {
        let name = self.entity(entity)[key].as_str().unwrap_or_else(|| panic!("{entity} has no {key}"));
        self.entity(name)
    }

    /// An object type's members: name -> optional.
    fn members(object: &Value) -> BTreeMap<String, bool> {
        object["members"]
            .as_array()
            .expect("an object type")
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_owned(), m.get("default").is_some()))
            .collect()
    }

    /// The enum type of an object's member.
    fn member_enum(&self, object: &Value, member: &str) -> BTreeSet<String> {
        let m = object["members"].as_array().unwrap().iter().find(|m| m["name"] == member).unwrap();
        let e = self.entity(m["type"].as_str().unwrap());
        e["members"].as_array().expect("an enum").iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect()
    }
}

/// What `T` (de)serializes as: its field or variant names.
fn names<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
    serde_introspect::<T>().iter().map(|s| (*s).to_owned()).collect()
}

/// Arguments: the Rust struct takes exactly the schema's members.
fn same_arguments<'de, T: Deserialize<'de>>(schema: &Schema, command: &str) {
    let arguments = Schema::members(schema.type_of(command, "arg-type"));
    let schema_names: BTreeSet<String> = arguments.keys().cloned().collect();
    assert_eq!(names::<T>(), schema_names, "{command}'s arguments: Rust (left) and the QAPI schema (right) differ");
}

/// A reply or event: what the library sends is what QEMU's visitor
/// accepts: every member the schema requires is always there, nothing
/// else ever is, and the Rust type reads every member back.
fn same_reply<'de, T: Deserialize<'de> + Serialize + Default>(object: &Value, what: &str) {
    let members = Schema::members(object);
    let schema_names: BTreeSet<String> = members.keys().cloned().collect();
    assert_eq!(names::<T>(), schema_names, "{what}: Rust (left) and the QAPI schema (right) differ");
    let sent = serde_json::to_value(T::default()).unwrap();
    let sent: BTreeSet<&str> = sent.as_object().unwrap().keys().map(String::as_str).collect();
    for (name, optional) in &members {
        assert!(*optional || sent.contains(name.as_str()), "{what}: the schema requires {name}, which Rust may omit");
    }
}

fn same_enum<'de, T: Deserialize<'de>>(schema: &Schema, object: &Value, member: &str, what: &str) {
    assert_eq!(names::<T>(), schema.member_enum(object, member), "{what}: Rust (left) and the QAPI schema (right)");
}

/// The patched QEMU with no machine: only its QMP monitor.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_types_are_the_qapi_schema_qemu_reports() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("qmp-schema");
    let socket = dir.join("qmp.sock");
    let child = Command::new(&artifacts.qemu)
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _qemu = Qemu(child);
    let mut qmp = None;
    for _ in 0..100 {
        if let Ok(q) = Qmp::connect(&socket).await {
            qmp = Some(q);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let qmp = qmp.expect("QEMU's QMP socket");
    let entities = qmp.execute("query-qmp-schema", Value::Null).await.unwrap();
    let schema = Schema(
        entities.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone())).collect(),
    );

    same_arguments::<checkpoint::Args>(&schema, "__org.mekha_checkpoint");
    same_arguments::<checkpoint::EndArgs>(&schema, "__org.mekha_checkpoint-end");
    same_arguments::<checkpoint::QueryArgs>(&schema, "__org.mekha_query-checkpoint");
    same_arguments::<restore::Args>(&schema, "__org.mekha_restore");
    same_arguments::<restore::QueryArgs>(&schema, "__org.mekha_query-restore");
    same_arguments::<restore::ResumeArgs>(&schema, "__org.mekha_resume");

    let checkpoint_info = schema.type_of("__org.mekha_query-checkpoint", "ret-type");
    same_reply::<checkpoint::Info>(checkpoint_info, "__org.mekha_CheckpointInfo");
    same_reply::<checkpoint::Info>(schema.type_of("__org.mekha_CHECKPOINT", "arg-type"), "__org.mekha_CHECKPOINT");
    same_enum::<checkpoint::Status>(&schema, checkpoint_info, "status", "__org.mekha_CheckpointStatus");
    same_enum::<checkpoint::Mode>(&schema, checkpoint_info, "mode", "__org.mekha_CheckpointMode");

    let restore_info = schema.type_of("__org.mekha_query-restore", "ret-type");
    same_reply::<restore::Info>(restore_info, "__org.mekha_RestoreInfo");
    same_reply::<restore::Info>(schema.type_of("__org.mekha_RESTORE", "arg-type"), "__org.mekha_RESTORE");
    same_enum::<restore::Status>(&schema, restore_info, "status", "__org.mekha_RestoreStatus");
    let restore_args = schema.type_of("__org.mekha_restore", "arg-type");
    same_enum::<TimePolicy>(&schema, restore_args, "time", "__org.mekha_TimePolicy");
}
