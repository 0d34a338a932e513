// SPDX-License-Identifier: GPL-2.0-or-later
//! Each mekha QMP command and event once: its name, its arguments and its
//! reply or data. The library answers by these types, the coordinator and
//! the tests call by them, and `tests/qmp_schema.rs` holds them against
//! the QAPI schema QEMU reports.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{checkpoint, library, restore, time};

/// The downstream-extension prefix of mekha's QMP commands and events.
pub const PREFIX: &str = "__org.mekha_";

/// A mekha QMP command.
pub trait Command {
    /// Its name without [`PREFIX`].
    const NAME: &'static str;
    /// Its arguments (`{}` for none: [`Empty`]).
    type Args: Serialize + DeserializeOwned;
    /// What it returns (`{}` for nothing: [`Empty`]).
    type Reply: Serialize + DeserializeOwned;
}

/// A mekha QMP event.
pub trait Event {
    /// Its name, with [`PREFIX`].
    const NAME: &'static str;
    /// Its data.
    type Data: Serialize + DeserializeOwned;
}

/// The arguments of a command that takes none, and the reply of one that
/// returns nothing: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

macro_rules! commands {
    ($($(#[$doc:meta])* $marker:ident = $name:literal, $args:ty => $reply:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $marker {}

        impl Command for $marker {
            const NAME: &'static str = $name;
            type Args = $args;
            type Reply = $reply;
        }
    )*};
}

commands! {
    /// `__org.mekha_query-info`: the library and what it sees of the VM.
    QueryInfo = "query-info", Empty => library::Info;
    /// `__org.mekha_checkpoint`: starts a live checkpoint.
    Checkpoint = "checkpoint", checkpoint::Args => Empty;
    /// `__org.mekha_checkpoint-end`: ends the live phase.
    CheckpointEnd = "checkpoint-end", checkpoint::EndArgs => Empty;
    /// `__org.mekha_checkpoint-cancel`: gives up the running checkpoint.
    CheckpointCancel = "checkpoint-cancel", Empty => Empty;
    /// `__org.mekha_checkpoint-persist`: lets a held image be written.
    CheckpointPersist = "checkpoint-persist", Empty => Empty;
    /// `__org.mekha_query-checkpoint`: a checkpoint's progress.
    QueryCheckpoint = "query-checkpoint", checkpoint::QueryArgs => checkpoint::Info;
    /// `__org.mekha_restore`: restores the VM from an image.
    Restore = "restore", restore::Args => Empty;
    /// `__org.mekha_query-restore`: a restore's progress.
    QueryRestore = "query-restore", restore::QueryArgs => restore::Info;
    /// `__org.mekha_resume`: resumes a VM a restore left paused.
    Resume = "resume", restore::ResumeArgs => Empty;
    /// `__org.mekha_query-time`: the VM's clocks against the host's.
    QueryTime = "query-time", Empty => time::Info;
    /// `__org.mekha_set-time`: changes the time policy.
    SetTime = "set-time", time::SetArgs => Empty;
}

/// `__org.mekha_CHECKPOINT`: a checkpoint changed status.
#[derive(Debug)]
pub enum CheckpointEvent {}

impl Event for CheckpointEvent {
    const NAME: &'static str = "__org.mekha_CHECKPOINT";
    type Data = checkpoint::Info;
}

/// `__org.mekha_RESTORE`: a restore completed or failed.
#[derive(Debug)]
pub enum RestoreEvent {}

impl Event for RestoreEvent {
    const NAME: &'static str = "__org.mekha_RESTORE";
    type Data = restore::Info;
}
