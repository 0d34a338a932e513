// SPDX-License-Identifier: GPL-2.0-or-later
//! Dispatch of the QMP commands that QEMU's glue hands to the library.
//!
//! Arguments arrive as the JSON object QEMU's marshaller already checked
//! against the QAPI schema; replies are JSON values of the schema's return
//! type, which the glue checks again on its way back. Both are the
//! contract's types (`mekha_ckpt_core::session::commands`).

use mekha_ckpt_core::session::commands::{
    Checkpoint, CheckpointCancel, CheckpointEnd, CheckpointPersist, QueryCheckpoint, QueryInfo, QueryRestore,
    QueryTime, Restore, Resume, SetTime,
};
use mekha_ckpt_core::session::{Command, Empty, Error, Result};

use crate::{checkpoint, guest_time, info, restore};

/// Handle `name` (without the `__org.mekha_` prefix) with `args_json`.
/// Ok is the JSON reply, Err the failure for the QMP client.
pub(crate) fn dispatch(name: &str, args_json: &str) -> Result<String> {
    let json = args_json;
    match name {
        QueryInfo::NAME => answer::<QueryInfo>(json, |Empty {}| Ok(info::query_info())),
        Checkpoint::NAME => answer::<Checkpoint>(json, |args| checkpoint::start(args).map(|()| Empty {})),
        CheckpointEnd::NAME => {
            answer::<CheckpointEnd>(json, |args| checkpoint::end_live_phase(args).map(|()| Empty {}))
        }
        CheckpointCancel::NAME => answer::<CheckpointCancel>(json, |Empty {}| checkpoint::cancel().map(|()| Empty {})),
        CheckpointPersist::NAME => {
            answer::<CheckpointPersist>(json, |Empty {}| checkpoint::release_persist().map(|()| Empty {}))
        }
        QueryCheckpoint::NAME => answer::<QueryCheckpoint>(json, |args| Ok(checkpoint::query(args))),
        Restore::NAME => answer::<Restore>(json, |args| restore::start(args).map(|()| Empty {})),
        QueryRestore::NAME => answer::<QueryRestore>(json, |args| Ok(restore::query(args))),
        Resume::NAME => answer::<Resume>(json, |args| restore::resume(args).map(|()| Empty {})),
        QueryTime::NAME => answer::<QueryTime>(json, |Empty {}| Ok(guest_time::query())),
        SetTime::NAME => answer::<SetTime>(json, |args| guest_time::set(args).map(|()| Empty {})),
        _ => Err(Error::invalid_argument(format!("mekha: this library does not implement command '{name}'"))),
    }
}

/// Reads `C`'s arguments, runs `handle` and encodes its reply.
fn answer<C: Command>(args_json: &str, handle: impl FnOnce(C::Args) -> Result<C::Reply>) -> Result<String> {
    let args = serde_json::from_str(args_json)
        .map_err(|e| Error::invalid_argument(format!("mekha: bad arguments for {}: {e}", C::NAME)))?;
    Ok(serde_json::to_string(&handle(args)?).expect("replies encode"))
}
