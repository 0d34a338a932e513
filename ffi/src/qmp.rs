// SPDX-License-Identifier: GPL-2.0-or-later
//! Dispatch of the QMP commands that QEMU's glue hands to the library.
//!
//! Arguments arrive as the JSON object QEMU's marshaller already checked
//! against the QAPI schema; replies are JSON values of the schema's return
//! type, which the glue checks again on its way back.

use crate::info;

/// Handle `name` (without the `__org.mekha_` prefix) with `args_json`.
/// Ok is the JSON reply, Err a message for the QMP client.
pub(crate) fn dispatch(name: &str, args_json: &str) -> Result<String, String> {
    let _args: serde_json::Value =
        serde_json::from_str(args_json).map_err(|e| format!("mekha: bad arguments for {name}: {e}"))?;
    let reply = match name {
        "query-info" => serde_json::to_value(info::query_info()),
        _ => return Err(format!("mekha: this library does not implement command '{name}'")),
    };
    reply
        .and_then(|v| serde_json::to_string(&v))
        .map_err(|e| format!("mekha: cannot encode the reply to {name}: {e}"))
}
