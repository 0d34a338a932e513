// SPDX-License-Identifier: GPL-2.0-or-later
//! Dispatch of the QMP commands that QEMU's glue hands to the library.
//!
//! Arguments arrive as the JSON object QEMU's marshaller already checked
//! against the QAPI schema; replies are JSON values of the schema's return
//! type, which the glue checks again on its way back.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{checkpoint, guest_time, info, restore};

/// Handle `name` (without the `__org.mekha_` prefix) with `args_json`.
/// Ok is the JSON reply, Err a message for the QMP client.
pub(crate) fn dispatch(name: &str, args_json: &str) -> Result<String, String> {
    let reply = match name {
        "query-info" => to_json(info::query_info()),
        "checkpoint" => checkpoint::start(args(name, args_json)?).map(|()| Value::Object(Default::default()))?,
        "checkpoint-end" => checkpoint::end_live_phase(args(name, args_json)?).map(|()| empty())?,
        "checkpoint-cancel" => checkpoint::cancel().map(|()| empty())?,
        "checkpoint-persist" => checkpoint::release_persist().map(|()| empty())?,
        "query-checkpoint" => to_json(checkpoint::query(args(name, args_json)?)),
        "restore" => restore::start(args(name, args_json)?).map(|()| Value::Object(Default::default()))?,
        "query-restore" => to_json(restore::query(args(name, args_json)?)),
        "resume" => restore::resume(args(name, args_json)?).map(|()| empty())?,
        "query-time" => to_json(guest_time::query()),
        "set-time" => guest_time::set(args(name, args_json)?).map(|()| Value::Object(Default::default()))?,
        _ => return Err(format!("mekha: this library does not implement command '{name}'")),
    };
    Ok(reply.to_string())
}

fn args<T: DeserializeOwned>(name: &str, args_json: &str) -> Result<T, String> {
    serde_json::from_str(args_json).map_err(|e| format!("mekha: bad arguments for {name}: {e}"))
}

fn empty() -> Value {
    Value::Object(Default::default())
}

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("replies encode")
}
