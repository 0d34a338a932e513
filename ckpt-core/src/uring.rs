// SPDX-License-Identifier: GPL-2.0-or-later
//! The io_uring writer: page-aligned writes at fixed offsets, many in
//! flight, each identified by the caller's token.
//!
//! The writer opens its own descriptor on the caller's file (through
//! `/proc/self/fd/N`, which works for unlinked files too) so that it can use
//! `O_DIRECT` without changing the caller's descriptor. Direct I/O skips the
//! page cache: staged pages are written once and never read back, so
//! caching them would only evict guest-useful memory. A filesystem that
//! refuses `O_DIRECT` (EINVAL at open or at the first write, e.g. ramfs)
//! gets buffered writes instead; [`UringWriter::direct`] tells which.
//!
//! Every buffer, length and offset must be 4 KiB aligned whether or not
//! `O_DIRECT` is in use, so that a misuse shows up on every filesystem:
//! this writer is for page data (staging memory and image layout offsets
//! are aligned by construction).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use io_uring::{opcode, types, IoUring};

use crate::width::to_usize;
use crate::PAGE_SIZE;

/// Settings of a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Requests in flight at most; [`UringWriter::submit`] waits for a
    /// completion beyond that.
    pub queue_depth: u32,
    /// Try `O_DIRECT` first.
    pub direct: bool,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions { queue_depth: 32, direct: true }
    }
}

/// The outcome of one submitted write.
#[derive(Debug)]
pub struct Completion {
    /// The token the caller gave the write at submission.
    pub token: u64,
    /// Ok once every byte is written (short writes are continued); the
    /// error otherwise, e.g. ENOSPC or EIO.
    pub result: io::Result<()>,
}

/// One write request, possibly continued after short writes.
#[derive(Debug)]
struct Op {
    token: u64,
    buf: *const u8,
    len: usize,
    offset: u64,
    done: usize,
}

/// Writes page-aligned buffers into one file through an io_uring.
pub struct UringWriter {
    ring: IoUring,
    file: File,
    /// Descriptors replaced by the buffered fallback, kept open until the
    /// requests that used them are gone.
    retired: Vec<File>,
    direct: bool,
    depth: usize,
    /// Requests in flight, indexed by the ring's user_data.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    ready: Vec<Completion>,
    bytes_written: u64,
    #[cfg(test)]
    fake_einval: bool,
    /// The next entering of the kernel fails with this errno (the seam of
    /// the tests of a ring that refuses a submission).
    #[cfg(test)]
    fail_enter: Option<i32>,
}

// SAFETY: the raw pointers are the callers' buffers, which submit's
// contract keeps valid until their completions whatever thread reaps them;
// the ring and descriptors are plain kernel handles.
unsafe impl Send for UringWriter {}

impl std::fmt::Debug for UringWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter")
            .field("fd", &self.file.as_raw_fd())
            .field("direct", &self.direct)
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl UringWriter {
    /// A writer on the same file as `file` (which may be open read-only
    /// if the file's permissions allow writing).
    pub fn new(file: &File, opts: WriterOptions) -> io::Result<UringWriter> {
        let depth = opts.queue_depth.max(1);
        let ring = IoUring::new(depth)?;
        let (file, direct) = reopen(file, opts.direct)?;
        let depth = depth as usize;
        Ok(UringWriter {
            ring,
            file,
            retired: Vec::new(),
            direct,
            depth,
            ops: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
            ready: Vec::new(),
            bytes_written: 0,
            #[cfg(test)]
            fake_einval: false,
            #[cfg(test)]
            fail_enter: None,
        })
    }

    /// Whether writes bypass the page cache (`O_DIRECT`).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Writes submitted that the kernel has not finished yet (at most the
    /// queue depth; short writes being continued count).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Bytes the kernel reported written, over the writer's life.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Grows the file to at least `len` bytes (sparse; never shrinks it).
    /// Writes inside the file then never extend it: extending `O_DIRECT`
    /// writes serialize on the inode lock (ext4, xfs), which halves the
    /// throughput of a deep queue.
    pub fn reserve_len(&self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < len {
            self.file.set_len(len)?;
        }
        Ok(())
    }

    /// Starts writing `len` bytes from `buf` at `offset`; its completion
    /// comes back with `token` from [`Self::reap`], [`Self::drain`] or
    /// [`Self::sync`]. Waits for a completion first when `queue_depth`
    /// requests are in flight. An error means the ring itself failed and
    /// the request was not queued. Once queued in the ring, a request is
    /// the kernel's: a failure to enter the kernel then is not this
    /// request's error but the ring's, met again (and retried) by the
    /// next reap, drain or sync.
    ///
    /// # Safety
    /// `buf` must stay valid and unchanged for `len` bytes until this
    /// token's completion has been returned.
    pub unsafe fn submit(&mut self, token: u64, buf: *const u8, len: usize, offset: u64) -> io::Result<()> {
        let misaligned = (buf as u64 | len as u64 | offset) & (PAGE_SIZE as u64 - 1);
        assert!(misaligned == 0, "write of {len} bytes at {offset} from {buf:p} is not {PAGE_SIZE}-aligned");
        assert!(len > 0 && len <= u32::MAX as usize & !(PAGE_SIZE - 1), "bad write length {len}");
        while self.in_flight == self.depth {
            self.wait_one()?;
        }
        let slot = self.free.pop().expect("a free slot below the queue depth");
        self.ops[slot] = Some(Op { token, buf, len, offset, done: 0 });
        if let Err(e) = self.push(slot) {
            self.ops[slot] = None;
            self.free.push(slot);
            return Err(e);
        }
        self.in_flight += 1;
        // The entry is in the ring, visible to the kernel: its buffer must
        // stay untouched until its completion, so no error is returned
        // from here on; reap, drain and sync enter the kernel again.
        let _ = self.enter(0);
        Ok(())
    }

    /// Completions so far; with `wait`, at least one if any request is in
    /// flight.
    pub fn reap(&mut self, wait: bool) -> io::Result<Vec<Completion>> {
        self.submit_queued()?;
        self.collect()?;
        if wait && self.ready.is_empty() && self.in_flight > 0 {
            while self.ready.is_empty() && self.in_flight > 0 {
                self.wait_one()?;
            }
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// Waits for every request in flight and returns all completions not
    /// returned yet.
    pub fn drain(&mut self) -> io::Result<Vec<Completion>> {
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// Makes everything written so far durable: waits for the requests in
    /// flight (their completions stay for the next reap or drain), then
    /// fdatasync.
    pub fn sync(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        self.file.sync_data()
    }

    /// Hands the kernel the entries a failed entering left in the ring.
    fn submit_queued(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter(0)
    }

    /// Queues the rest of request `slot`.
    fn push(&mut self, slot: usize) -> io::Result<()> {
        let op = self.ops[slot].as_ref().expect("request in flight");
        let rest = op.len - op.done;
        // SAFETY: inside the caller's buffer.
        let buf = unsafe { op.buf.add(op.done) };
        // A request beyond 4 GiB goes as a short write: its rest is queued
        // again, as for any short write.
        let entry = opcode::Write::new(types::Fd(self.file.as_raw_fd()), buf, u32::try_from(rest).unwrap_or(u32::MAX))
            .offset(op.offset + op.done as u64)
            .build()
            .user_data(slot as u64);
        // SAFETY: the buffer outlives the request (submit's contract). The
        // queue has room: it holds queue_depth entries and every entry is
        // submitted before another request is accepted.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Makes the next entering of the kernel fail with `errno`, after the
    /// request it would submit is queued in the ring.
    #[cfg(test)]
    pub(crate) fn fail_next_enter(&mut self, errno: i32) {
        self.fail_enter = Some(errno);
    }

    /// Submits queued entries and waits for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = self.fail_enter.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_one(&mut self) -> io::Result<()> {
        let before = self.in_flight;
        while self.in_flight == before {
            self.enter(1)?;
            self.collect()?;
        }
        Ok(())
    }

    /// Handles the completion queue: finished requests go to `ready`,
    /// short or retryable ones are queued again.
    fn collect(&mut self) -> io::Result<()> {
        let cqes: Vec<(usize, i32)> =
            self.ring.completion().map(|cqe| (to_usize(cqe.user_data()), cqe.result())).collect();
        let mut requeued = false;
        for (slot, result) in cqes {
            #[cfg(test)]
            let result = if std::mem::take(&mut self.fake_einval) { -libc::EINVAL } else { result };
            let op = self.ops[slot].as_mut().expect("completion of a request in flight");
            let outcome = match result {
                0 => Some(Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress"))),
                n if n > 0 => {
                    op.done += n as usize;
                    self.bytes_written += n as u64;
                    (op.done == op.len).then_some(Ok(()))
                }
                _ if result == -libc::EINTR || result == -libc::EAGAIN => None,
                _ if result == -libc::EINVAL && self.direct => match self.fall_back_to_buffered() {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                },
                _ => Some(Err(io::Error::from_raw_os_error(-result))),
            };
            match outcome {
                Some(result) => {
                    let op = self.ops[slot].take().expect("request in flight");
                    self.free.push(slot);
                    self.in_flight -= 1;
                    self.ready.push(Completion { token: op.token, result });
                }
                None => match self.push(slot) {
                    Ok(()) => requeued = true,
                    // Not queued again: the request ends here, with the
                    // ring's error, and its buffer is the caller's again.
                    Err(e) => {
                        let op = self.ops[slot].take().expect("request in flight");
                        self.free.push(slot);
                        self.in_flight -= 1;
                        self.ready.push(Completion { token: op.token, result: Err(e) });
                    }
                },
            }
        }
        if requeued {
            // As in submit: the requeued entries are the kernel's now; a
            // failed entering is met again by the next one.
            let _ = self.enter(0);
        }
        Ok(())
    }

    /// The filesystem took `O_DIRECT` at open but refuses the writes.
    fn fall_back_to_buffered(&mut self) -> io::Result<()> {
        let (file, _) = reopen(&self.file, false)?;
        self.retired.push(std::mem::replace(&mut self.file, file));
        self.direct = false;
        Ok(())
    }
}

impl Drop for UringWriter {
    /// The kernel may still read the callers' buffers: wait for it.
    fn drop(&mut self) {
        while self.in_flight > 0 {
            if self.wait_one().is_err() {
                break;
            }
        }
    }
}

/// A new write descriptor on `file`'s inode, direct if asked and allowed.
fn reopen(file: &File, direct: bool) -> io::Result<(File, bool)> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if direct {
        match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((OpenOptions::new().write(true).open(&path)?, false))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    /// A page-aligned page for test buffers.
    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct AlignedPage([u8; PAGE_SIZE]);

    fn aligned(pages: usize, seed: u64) -> Vec<AlignedPage> {
        let mut x = seed | 1;
        (0..pages)
            .map(|_| {
                let mut p = AlignedPage([0; PAGE_SIZE]);
                for chunk in p.0.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes());
                }
                p
            })
            .collect()
    }

    fn bytes(pages: &[AlignedPage]) -> &[u8] {
        // SAFETY: AlignedPage is plain bytes without padding.
        unsafe { std::slice::from_raw_parts(pages.as_ptr().cast(), std::mem::size_of_val(pages)) }
    }

    /// Writes random runs (from random buffers to random page offsets,
    /// possibly overlapping earlier ones), then reads the file back.
    fn random_runs_read_back(dir: &Path, opts: WriterOptions) -> bool {
        let file = tempfile::tempfile_in(dir).unwrap();
        let mut writer = UringWriter::new(&file, opts).unwrap();
        let data = aligned(512, 99);
        let mut expected = vec![None::<usize>; 2048];
        let mut x = 7u64;
        let mut rand = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut submitted = BTreeMap::new();
        for token in 0..300 {
            let pages = 1 + to_usize(rand(32));
            let src = to_usize(rand((data.len() - pages) as u64));
            let dst = to_usize(rand((expected.len() - pages) as u64));
            // A write over one still in flight could land first: wait.
            if submitted.values().any(|&(d, n)| d < dst + pages && dst < d + n) {
                for c in writer.drain().unwrap() {
                    c.result.unwrap();
                    submitted.remove(&c.token);
                }
            }
            let buf = bytes(&data[src..src + pages]);
            // SAFETY: `data` outlives the writer's requests (drained below).
            unsafe { writer.submit(token, buf.as_ptr(), buf.len(), (dst * PAGE_SIZE) as u64) }.unwrap();
            submitted.insert(token, (dst, pages));
            for i in 0..pages {
                expected[dst + i] = Some(src + i);
            }
            assert!(writer.in_flight() <= opts.queue_depth as usize);
            for c in writer.reap(false).unwrap() {
                c.result.unwrap();
                assert!(submitted.remove(&c.token).is_some(), "unknown token {}", c.token);
            }
        }
        for c in writer.drain().unwrap() {
            c.result.unwrap();
            assert!(submitted.remove(&c.token).is_some());
        }
        assert!(submitted.is_empty(), "lost completions: {submitted:?}");
        writer.sync().unwrap();
        let mut page = [0u8; PAGE_SIZE];
        for (p, want) in expected.iter().enumerate() {
            match file.read_exact_at(&mut page, (p * PAGE_SIZE) as u64) {
                Ok(()) => match want {
                    Some(src) => assert_eq!(page, data[*src].0, "page {p}"),
                    None => assert_eq!(page, [0; PAGE_SIZE], "page {p}"),
                },
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => assert!(want.is_none()),
                Err(e) => panic!("{e}"),
            }
        }
        writer.direct()
    }

    #[test]
    fn random_runs_read_back_equal_on_tmp() {
        let direct = random_runs_read_back(&std::env::temp_dir(), WriterOptions::default());
        eprintln!("O_DIRECT on {}: {direct}", std::env::temp_dir().display());
        random_runs_read_back(&std::env::temp_dir(), WriterOptions { queue_depth: 3, direct: false });
    }

    #[test]
    fn random_runs_read_back_equal_on_dev_shm() {
        // tmpfs accepts O_DIRECT since Linux 6.6; older kernels fall back.
        random_runs_read_back(Path::new("/dev/shm"), WriterOptions { queue_depth: 8, direct: true });
    }

    /// A scratch filesystem mounted for one test, unmounted on drop (even
    /// when the test panics).
    struct Mount {
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Mount {
        /// None when we may not mount (not root, or in a container).
        fn new(fstype: &str, options: &str) -> Option<Mount> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("mnt");
            std::fs::create_dir(&path).unwrap();
            let ok = Command::new("mount")
                .args(["-t", fstype, "-o", options, fstype])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                mekha_test_skip::skip(&format!("cannot mount {fstype}"));
                return None;
            }
            Some(Mount { path, _dir: dir })
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }

    #[test]
    fn falls_back_to_buffered_where_o_direct_is_refused_at_open() {
        let Some(mount) = Mount::new("ramfs", "mode=0700") else { return };
        let direct = random_runs_read_back(&mount.path, WriterOptions::default());
        assert!(!direct, "ramfs took O_DIRECT?");
    }

    #[test]
    fn falls_back_to_buffered_when_the_first_write_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let mut writer = UringWriter::new(&file, WriterOptions::default()).unwrap();
        if !writer.direct() {
            mekha_test_skip::skip("no O_DIRECT in the temp dir");
            return;
        }
        writer.fake_einval = true;
        let data = aligned(4, 3);
        let buf = bytes(&data);
        // SAFETY: `data` outlives the drain.
        unsafe { writer.submit(5, buf.as_ptr(), buf.len(), 8192) }.unwrap();
        let done = writer.drain().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].token, 5);
        done[0].result.as_ref().unwrap();
        assert!(!writer.direct());
        let mut back = vec![0u8; buf.len()];
        file.read_exact_at(&mut back, 8192).unwrap();
        assert_eq!(back, buf);
    }

    /// A request the ring holds is the ring's, whatever entering the
    /// kernel said: it completes, and its token comes back once.
    #[test]
    fn a_request_queued_before_entering_the_kernel_failed_completes() {
        let file = tempfile::tempfile().unwrap();
        let mut writer = UringWriter::new(&file, WriterOptions::default()).unwrap();
        let data = aligned(4, 11);
        let buf = bytes(&data);
        writer.fail_next_enter(libc::EAGAIN);
        // SAFETY: `data` outlives the drain.
        unsafe { writer.submit(9, buf.as_ptr(), buf.len(), 0) }.unwrap();
        assert_eq!(writer.in_flight(), 1);
        // A reap without waiting enters the kernel again.
        let mut done = writer.reap(false).unwrap();
        done.extend(writer.drain().unwrap());
        assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), [9]);
        done[0].result.as_ref().unwrap();
        let mut back = vec![0u8; buf.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, buf);
    }

    #[test]
    fn full_disk_fails_the_right_tokens() {
        let Some(mount) = Mount::new("tmpfs", "size=1m") else { return };
        let file = tempfile::tempfile_in(&mount.path).unwrap();
        let mut writer = UringWriter::new(&file, WriterOptions { queue_depth: 4, direct: true }).unwrap();
        let data = aligned(64, 5);
        let buf = bytes(&data);
        // 16 writes of 256 KiB, each to its own place: 4 fit in 1 MiB.
        for token in 0..16u64 {
            // SAFETY: `data` outlives the drain.
            unsafe { writer.submit(token, buf.as_ptr(), buf.len(), token * buf.len() as u64) }.unwrap();
        }
        let mut done = writer.reap(true).unwrap();
        done.extend(writer.drain().unwrap());
        done.sort_by_key(|c| c.token);
        assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), (0..16).collect::<Vec<_>>());
        let mut ok = 0;
        for c in &done {
            match &c.result {
                Ok(()) => {
                    let mut back = vec![0u8; buf.len()];
                    file.read_exact_at(&mut back, c.token * buf.len() as u64).unwrap();
                    assert_eq!(back, buf, "token {}", c.token);
                    ok += 1;
                }
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "token {}: {e}", c.token),
            }
        }
        assert!((1..=4).contains(&ok), "{ok} writes of 256 KiB fit in a 1 MiB tmpfs");
        writer.sync().unwrap();
    }

    #[test]
    #[should_panic(expected = "aligned")]
    fn unaligned_offset_panics() {
        let file = tempfile::tempfile().unwrap();
        let mut writer = UringWriter::new(&file, WriterOptions::default()).unwrap();
        let data = aligned(1, 1);
        // SAFETY: panics before submitting.
        let _ = unsafe { writer.submit(0, bytes(&data).as_ptr(), PAGE_SIZE, 512) };
    }
}
