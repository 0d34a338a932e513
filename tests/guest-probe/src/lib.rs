// SPDX-License-Identifier: GPL-2.0-or-later
//! What the host's tests share with the guest probe: the formats the probe
//! writes where the host reads them back (disk images).

pub mod diskfmt;
