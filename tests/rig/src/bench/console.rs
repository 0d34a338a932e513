// SPDX-License-Identifier: GPL-2.0-or-later
//! The guest probe's events with the host time each line reached the
//! serial log: which events a guest had printed before an instant.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::probe::{parse_line, ProbeEvent};

use super::stats::now;

/// How often the log is read: the precision of the host times.
const POLL: Duration = Duration::from_millis(5);

/// A probe event and the host time it was seen (s, CLOCK_REALTIME).
#[derive(Debug, Clone)]
pub struct TimedProbeEvent {
    pub t: f64,
    pub event: ProbeEvent,
}

/// A thread following one VM's serial log; it stops on drop.
pub struct Console {
    events: Arc<Mutex<Vec<TimedProbeEvent>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    pub fn follow(path: &Path) -> Console {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped, path) = (events.clone(), stop.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut offset = 0u64;
            let mut partial = String::new();
            while !stopped.load(Ordering::Relaxed) {
                let mut chunk = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        let _ = f.read_to_end(&mut chunk);
                    }
                }
                offset += chunk.len() as u64;
                if !chunk.is_empty() {
                    let t = now();
                    partial.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = partial.find('\n') {
                        let line: String = partial.drain(..=end).collect();
                        if let Some(event) = parse_line(line.trim_end()) {
                            sink.lock().unwrap().push(TimedProbeEvent { t, event });
                        }
                    }
                }
                std::thread::sleep(POLL);
            }
        });
        Console { events, stop, thread: Some(thread) }
    }

    pub fn events(&self) -> Vec<TimedProbeEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
