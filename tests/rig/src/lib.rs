// SPDX-License-Identifier: GPL-2.0-or-later
//! The test rig: real VMs for mekha's system tests and demo.
//!
//! It boots the patched QEMU (target/qemu/bin) under TCG with the guest rig
//! (target/guest: Debian's cloud kernel, busybox and the guest probe), on a
//! Linux bridge inside a network namespace it creates and deletes, and reads
//! the probe's events from each VM's serial console.
//!
//! Everything it starts is torn down on drop, panics included.

pub mod artifacts;
pub mod bench;
pub mod cluster;
pub mod delay;
pub mod disk;
pub mod hosts;
pub mod libvirt;
pub mod netns;
pub mod probe;
pub mod spec;
pub mod vm;

pub use artifacts::Artifacts;
pub use cluster::{Cluster, ClusterConfig};
pub use delay::DelayLine;
pub use hosts::FakeHosts;
pub use netns::Netns;
pub use probe::{ProbeEvent, ProbeLog};
pub use spec::SpecVm;
pub use vm::{Vm, VmConfig};
