// SPDX-License-Identifier: GPL-2.0-or-later
//! How a test that cannot run on this host says so.
//!
//! libtest has no run-time skip: a test that returns early passes. A test
//! that finds its host lacking (no userfaultfd write protection, no
//! O_DIRECT, no mount) calls [`skip`] before it returns; `ci/test` reads
//! the records, counts those tests as skipped instead of passed, and fails
//! the run unless skips are allowed (`MEKHA_ALLOW_SKIPS=1`): every test can
//! run on the machines CI runs on, so a skip there is a defect.

use std::fs::OpenOptions;
use std::io::Write;

/// The variable naming the file `ci/test` collects skip records in.
pub const SKIPS_FILE_VAR: &str = "MEKHA_TEST_SKIPS";

/// Records that the running test is skipped, and why. Call it, then return
/// from the test.
pub fn skip(reason: &str) {
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("(unnamed test)").to_owned();
    // Test names repeat across test binaries: the binary tells them apart.
    let binary = std::env::current_exe().ok().and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let line = format!("mekha-test-skip: {} {test}: {reason}\n", binary.as_deref().unwrap_or("(unknown)"));
    // Past libtest's capture (eprintln! would show only for failures).
    let _ = std::io::stderr().write_all(line.as_bytes());
    let Some(path) = std::env::var_os(SKIPS_FILE_VAR) else { return };
    // One write of one short line with O_APPEND: records of parallel tests
    // and test binaries do not interleave.
    let written =
        OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // Not recorded means counted as passed: that must not go unnoticed.
        panic!("{test} is skipped ({reason}) but the record could not be written to {}: {e}", path.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_recorded_under_the_tests_name() {
        let dir = std::env::temp_dir().join(format!("mekha-test-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skips");
        // The variable is process-wide: set and read it in one test only.
        std::env::set_var(SKIPS_FILE_VAR, &file);
        skip("no frobnicator on this host");
        skip("second reason");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let binary = std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            text,
            format!(
                "mekha-test-skip: {binary} tests::a_skip_is_recorded_under_the_tests_name: no frobnicator on this host\n\
                 mekha-test-skip: {binary} tests::a_skip_is_recorded_under_the_tests_name: second reason\n"
            )
        );
    }
}
