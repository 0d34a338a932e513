// SPDX-License-Identifier: GPL-2.0-or-later
//! The QMP contract held against the QEMU that serves it: the Rust types
//! of every mekha command's arguments, replies, statuses, error kinds and
//! events (`mekha_ckpt_core::session`, which the library parses and
//! answers with and the coordinator and the tests call with) against the
//! QAPI schema the patched QEMU reports (`query-qmp-schema`). A command
//! or a field added to one side only, renamed, or made optional in the
//! schema but always expected in Rust, fails here before it fails a user.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mekha_ckpt_core::session::commands::{
    Checkpoint, CheckpointCancel, CheckpointEnd, CheckpointEvent, CheckpointPersist, QueryCheckpoint, QueryInfo,
    QueryRestore, QueryTime, Restore, RestoreEvent, Resume, SetTime,
};
use mekha_ckpt_core::session::{checkpoint, library, restore, Command as QmpCommand, ErrorKind, Event, PREFIX};
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

    /// The type of an object's member (of its elements, for an array).
    fn member_type(&self, object: &Value, member: &str) -> &Value {
        let m = object["members"].as_array().unwrap().iter().find(|m| m["name"] == member).unwrap();
        let t = self.entity(m["type"].as_str().unwrap());
        match t["meta-type"].as_str() {
            Some("array") => self.entity(t["element-type"].as_str().unwrap()),
            _ => t,
        }
    }

    /// The enum type of an object's member.
    fn member_enum(&self, object: &Value, member: &str) -> BTreeSet<String> {
        let e = self.member_type(object, member);
        e["members"].as_array().expect("an enum").iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect()
    }

    /// The names of every mekha command in the schema.
    fn mekha_commands(&self) -> BTreeSet<String> {
        let commands = self.0.values().filter(|e| e["meta-type"] == "command");
        commands.filter_map(|e| e["name"].as_str()?.strip_prefix(PREFIX).map(str::to_owned)).collect()
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

/// A command: its arguments and its reply are the contract's; returns
/// its name.
fn same_command<C: QmpCommand>(schema: &Schema) -> String
where
    C::Reply: Default,
{
    let name = format!("{PREFIX}{}", C::NAME);
    same_arguments::<C::Args>(schema, &name);
    same_reply::<C::Reply>(schema.type_of(&name, "ret-type"), &format!("{name}'s reply"));
    C::NAME.to_owned()
}

/// An event: its data are the contract's.
fn same_event<E: Event>(schema: &Schema)
where
    E::Data: Default,
{
    same_reply::<E::Data>(schema.type_of(E::NAME, "arg-type"), E::NAME);
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

    // Every command, each once in Rust: none is missing on either side.
    let rust_commands = BTreeSet::from([
        same_command::<QueryInfo>(&schema),
        same_command::<Checkpoint>(&schema),
        same_command::<CheckpointEnd>(&schema),
        same_command::<CheckpointCancel>(&schema),
        same_command::<CheckpointPersist>(&schema),
        same_command::<QueryCheckpoint>(&schema),
        same_command::<Restore>(&schema),
        same_command::<QueryRestore>(&schema),
        same_command::<Resume>(&schema),
        same_command::<QueryTime>(&schema),
        same_command::<SetTime>(&schema),
    ]);
    assert_eq!(rust_commands, schema.mekha_commands(), "mekha's commands: Rust (left) and the QAPI schema (right)");
    same_event::<CheckpointEvent>(&schema);
    same_event::<RestoreEvent>(&schema);

    let info = schema.type_of("__org.mekha_query-info", "ret-type");
    same_reply::<library::RamBlockInfo>(schema.member_type(info, "ram-blocks"), "__org.mekha_RamBlockInfo");
    same_reply::<library::NicInfo>(schema.member_type(info, "nics"), "__org.mekha_NicInfo");

    let end_args = schema.type_of("__org.mekha_checkpoint-end", "arg-type");
    let cut = schema.member_type(end_args, "cut");
    same_reply::<checkpoint::NetCut>(cut, "__org.mekha_NetCut");
    same_reply::<checkpoint::NetdevPeers>(schema.member_type(cut, "peers"), "__org.mekha_NetdevPeers");

    let checkpoint_info = schema.type_of("__org.mekha_query-checkpoint", "ret-type");
    same_enum::<checkpoint::Status>(&schema, checkpoint_info, "status", "__org.mekha_CheckpointStatus");
    same_enum::<checkpoint::Mode>(&schema, checkpoint_info, "mode", "__org.mekha_CheckpointMode");
    same_enum::<ErrorKind>(&schema, checkpoint_info, "error-kind", "__org.mekha_ErrorKind");
    let waiting = schema.member_type(checkpoint_info, "cut-waiting");
    same_reply::<checkpoint::NetdevPeers>(waiting, "__org.mekha_NetdevPeers");
    let disks = schema.member_type(checkpoint_info, "disks");
    same_reply::<checkpoint::DiskCapture>(disks, "__org.mekha_DiskCapture");
    let checkpoint_args = schema.type_of("__org.mekha_checkpoint", "arg-type");
    same_enum::<checkpoint::Mode>(&schema, checkpoint_args, "mode", "__org.mekha_CheckpointMode");

    let restore_info = schema.type_of("__org.mekha_query-restore", "ret-type");
    same_enum::<restore::Status>(&schema, restore_info, "status", "__org.mekha_RestoreStatus");
    same_enum::<ErrorKind>(&schema, restore_info, "error-kind", "__org.mekha_ErrorKind");
    let restore_args = schema.type_of("__org.mekha_restore", "arg-type");
    same_enum::<TimePolicy>(&schema, restore_args, "time", "__org.mekha_TimePolicy");
    let time_info = schema.type_of("__org.mekha_query-time", "ret-type");
    same_enum::<TimePolicy>(&schema, time_info, "policy", "__org.mekha_TimePolicy");
    let set_time_args = schema.type_of("__org.mekha_set-time", "arg-type");
    same_enum::<TimePolicy>(&schema, set_time_args, "policy", "__org.mekha_TimePolicy");
}
