// SPDX-License-Identifier: GPL-2.0-or-later
//! Order and concurrency of image writes: the cluster checkpoint is durable
//! when its last image is, so each storage target writes a bounded number
//! of images at once (more would only share its bandwidth and finish all
//! of them late), largest first (longest-processing-time order: the last
//! write to start is a short one), and targets write side by side.

use std::collections::BTreeMap;

/// One image to write.
#[derive(Debug, Clone)]
pub struct PendingImage {
    /// Storage target (see `storage::StorageReport::target`).
    pub target: String,
    pub bytes: u64,
}

/// The write schedule of one cluster checkpoint, by index into the images.
#[derive(Debug)]
pub struct PersistSchedule {
    /// Per target: images not started yet, next last.
    waiting: BTreeMap<String, Vec<usize>>,
    writing: Vec<(String, usize)>,
    per_target: usize,
}

impl PersistSchedule {
    pub fn new(images: &[PendingImage], per_target: usize) -> PersistSchedule {
        let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, image) in images.iter().enumerate() {
            waiting.entry(image.target.clone()).or_default().push(i);
        }
        for queue in waiting.values_mut() {
            // Smallest first in the vector: `pop` takes the largest.
            queue.sort_by_key(|&i| (images[i].bytes, std::cmp::Reverse(i)));
        }
        PersistSchedule { waiting, writing: Vec::new(), per_target: per_target.max(1) }
    }

    /// Images to start now; the caller starts them and reports each end
    /// with [`finished`](Self::finished).
    pub fn start(&mut self) -> Vec<usize> {
        let mut started = Vec::new();
        for (target, queue) in &mut self.waiting {
            let busy = self.writing.iter().filter(|(t, _)| t == target).count();
            for _ in busy..self.per_target {
                let Some(i) = queue.pop() else { break };
                self.writing.push((target.clone(), i));
                started.push(i);
            }
        }
        started
    }

    /// Images being written.
    pub fn writing(&self) -> impl Iterator<Item = usize> + '_ {
        self.writing.iter().map(|(_, i)| *i)
    }

    pub fn finished(&mut self, image: usize) {
        self.writing.retain(|(_, i)| *i != image);
    }

    pub fn done(&self) -> bool {
        self.writing.is_empty() && self.waiting.values().all(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(list: &[(&str, u64)]) -> Vec<PendingImage> {
        list.iter().map(|(t, b)| PendingImage { target: (*t).into(), bytes: *b }).collect()
    }

    #[test]
    fn each_target_writes_its_largest_first_within_its_bound() {
        let imgs = images(&[("a", 10), ("a", 30), ("b", 5), ("a", 20), ("b", 50), ("a", 30)]);
        let mut s = PersistSchedule::new(&imgs, 2);
        let mut first = s.start();
        first.sort();
        // a: the two 30s (index 1 before 5 on a tie); b: 50 and 5.
        assert_eq!(first, vec![1, 2, 4, 5]);
        assert!(s.start().is_empty(), "every target is at its bound");
        s.finished(4);
        assert!(s.start().is_empty(), "b has nothing left");
        s.finished(1);
        assert_eq!(s.start(), vec![3]);
        s.finished(5);
        assert_eq!(s.start(), vec![0]);
        for i in [2, 3, 0] {
            assert!(!s.done());
            s.finished(i);
        }
        assert!(s.done());
    }

    #[test]
    fn one_at_a_time_is_strict_size_order() {
        let imgs = images(&[("t", 1), ("t", 3), ("t", 2)]);
        let mut s = PersistSchedule::new(&imgs, 0);
        let mut order: Vec<usize> = Vec::new();
        while !s.done() {
            let started = s.start();
            assert_eq!(started.len(), 1);
            order.extend(&started);
            s.finished(started[0]);
        }
        assert_eq!(order, vec![1, 2, 0]);
    }
}
