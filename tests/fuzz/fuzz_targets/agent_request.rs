// SPDX-License-Identifier: GPL-2.0-or-later
//! A request line as an agent reads it (`Request::from_line`). What the
//! agent accepts, sent again, reads the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mekha_coordinator::agent::Request;
use mekha_coordinator::qmp::json_line;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::from_line(data) {
        let line = json_line(&request);
        let again = Request::from_line(&line).expect("an accepted request, sent again");
        assert_eq!(json_line(&again), line);
    }
});
