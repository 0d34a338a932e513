// SPDX-License-Identifier: GPL-2.0-or-later
//! What mekha's fuzz targets share: the forms their inputs take and the
//! scratch files they parse them from.

pub mod disk_pair;
pub mod scratch;
pub mod sparse_image;
