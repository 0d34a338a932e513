// SPDX-License-Identifier: GPL-2.0-or-later
//! Integer widths the code mixes, converted in one place.
//!
//! Page numbers, page counts and byte counts are `u64`, as in QEMU and in
//! the image format, while memory is indexed and sized by `usize`. mekha
//! builds for 64-bit hosts only (the build fails elsewhere), so `u64` to
//! `usize` never truncates; the lint that flags such casts
//! (`clippy::cast_possible_truncation`) stays on for every other cast,
//! where a truncation would be a bug.

use crate::PAGE_SIZE;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("mekha supports 64-bit hosts only: page numbers and sizes are u64 and index memory");

/// `n` as a `usize`: lossless, as `usize` is 64 bits wide here.
#[inline]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "usize is 64 bits wide: see the module doc")]
pub const fn to_usize(n: u64) -> usize {
    n as usize
}

/// The bytes `pages` guest pages take in memory.
#[inline]
#[must_use]
pub const fn page_bytes(pages: u64) -> usize {
    to_usize(pages) * PAGE_SIZE
}

/// A count of nanoseconds (e.g. `Duration::as_nanos`), saturated to `u64`:
/// u64 nanoseconds reach the year 2554.
#[inline]
#[must_use]
pub fn saturating_u64(nanos: u128) -> u64 {
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// A count of nanoseconds saturated to `i64`: i64 nanoseconds since the
/// epoch reach the year 2262.
#[inline]
#[must_use]
pub fn saturating_i64(nanos: u128) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_every_bit_or_saturate() {
        assert_eq!(to_usize(u64::MAX), usize::MAX);
        assert_eq!(page_bytes(3), 3 * PAGE_SIZE);
        assert_eq!(saturating_u64(u128::MAX), u64::MAX);
        assert_eq!(saturating_i64(u128::from(u64::MAX)), i64::MAX);
        assert_eq!(saturating_i64(42), 42);
    }
}
