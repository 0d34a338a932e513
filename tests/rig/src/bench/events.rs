// SPDX-License-Identifier: GPL-2.0-or-later
//! QMP events kept with QEMU's own timestamp and the host time this
//! process received them: the benches time pauses and restarts by QEMU's
//! STOP and RESUME events, as a user watching the monitor would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mekha_coordinator::qmp::{Event, Qmp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stats::now;

/// One event: QEMU's timestamp (its CLOCK_REALTIME, s) and the host time
/// of its arrival here (s, the same clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimedEvent {
    pub event: String,
    pub data: Value,
    pub qemu_t: f64,
    pub host_t: f64,
}

impl TimedEvent {
    fn from_qmp(e: Event, host_t: f64) -> TimedEvent {
        let seconds = e.timestamp.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
        let micros = e.timestamp.get("microseconds").and_then(Value::as_f64).unwrap_or(0.0);
        TimedEvent { event: e.event, data: e.data, qemu_t: seconds + micros / 1e6, host_t }
    }

    /// The `status` of a MIGRATION or mekha progress event.
    pub fn status(&self) -> Option<&str> {
        self.data.get("status").and_then(Value::as_str)
    }
}

/// Every event of one monitor since the log was started, in order.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<TimedEvent>>>,
}

impl EventLog {
    /// Starts recording `qmp`'s events (a task on the current runtime,
    /// ending when the connection closes).
    pub fn record(qmp: &Qmp) -> EventLog {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut rx = qmp.subscribe();
        let sink = events.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(e) => sink.lock().unwrap().push(TimedEvent::from_qmp(e, now())),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
        });
        EventLog { events }
    }

    /// A position in the log: later calls with it see later events only.
    pub fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn since(&self, mark: usize) -> Vec<TimedEvent> {
        self.events.lock().unwrap()[mark..].to_vec()
    }

    /// The first event since `mark` named `name` that satisfies `pred`.
    pub fn first(&self, mark: usize, name: &str, pred: impl Fn(&TimedEvent) -> bool) -> Option<TimedEvent> {
        self.events.lock().unwrap()[mark..].iter().find(|e| e.event == name && pred(e)).cloned()
    }

    /// Waits up to `timeout` for [`EventLog::first`].
    pub async fn wait(
        &self,
        mark: usize,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&TimedEvent) -> bool,
    ) -> Option<TimedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.first(mark, name, &pred) {
                return Some(e);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
