//! [`FaultyStorage`]: a fault-injecting [`Storage`] that wraps any other one
//! (normally [`super::GlommioStorage`] on a temporary directory), so that the
//! log's recovery code runs unchanged on real files after simulated crashes.
//!
//! Everything random is drawn from one seeded [`SimRng`]: the same seed and
//! the same sequence of operations give the same faults. Tests print the seed
//! when they fail ([`SeedGuard`]) and take it back from `RINGMQ_SEED`
//! ([`seed_from_env`]).
//!
//! What it models:
//! * **Power loss** ([`FaultHandle::power_loss`]). Every file opened through
//!   the wrapper gets an in-memory model: its *durable* image (as of the last
//!   successful `fdatasync`) and the writes and truncations issued since, in
//!   order. Directory entries (create, remove, rename) are journaled the same
//!   way and become durable with `sync_dir` of their directory. A power loss
//!   keeps a random prefix of each file's pending operations (the last kept
//!   write possibly torn at a random byte or 512-byte sector; where a torn
//!   write extended the file, the rest may read back as zeros), and a random
//!   prefix of the pending directory operations, then rewrites the real files
//!   with that state. A preallocation (`allocate`) is a pending operation
//!   like a write: kept or dropped whole, and the space it added reads as
//!   zeros wherever no kept write covers it (as unwritten extents do).
//!   Storage and file handles of the cycle before the power
//!   loss are dead from then on: every operation on them fails, so the old
//!   log's tasks cannot touch the disk while recovery runs. Recover through a
//!   fresh [`FaultHandle::storage`].
//! * **EIO** from `write_at` or `fdatasync`, **ENOSPC** on `write_at` and
//!   `allocate` (until [`FaultHandle::free_space`]), a filesystem without
//!   preallocation ([`FaultHandle::refuse_allocate`]), and a *lying* `fdatasync` that swallows the
//!   error and reports success without making anything durable (a negative
//!   control: it shows a test can see acknowledgements that should not have
//!   been sent).
//! * **Misdirected writes**: the next write lands at another offset but
//!   reports success ([`FaultHandle::misdirect_next_write`]).
//! * Latent damage on a quiescent store: bit flips, a block copied over
//!   another one, truncation at any byte, zero-filled tails
//!   ([`FaultHandle::flip_bit`], [`FaultHandle::copy_block`],
//!   [`FaultHandle::truncate_file`], [`FaultHandle::append_zeros`]).
//!
//! Limits: the model keeps whole file images in memory (test-sized files),
//! reads and rewrites real files with `std::fs` on the calling thread during
//! a power loss, and treats a sector as atomic (a torn write leaves each byte
//! either old or new, never garbage). Directories themselves are durable once
//! created.

use super::{DirEntry, FileRef, IoBuf, IoFuture, OpenMode, Storage, StorageFile, StorageRef};
use bytes::Bytes;
use event_listener::Event;
use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    rc::Rc,
};

/// A small deterministic PRNG (splitmix64): no dependency, good enough to
/// drive fault decisions and test workloads.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// A new generator whose stream is independent of this one's.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

/// The seed of a seeded test: `RINGMQ_SEED` if set (decimal or `0x` hex),
/// else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("RINGMQ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("RINGMQ_SEED={s:?} is not a u64"))
        }
        Err(_) => default,
    }
}

/// Prints the seed and how to rerun with it if the thread panics while the
/// guard is alive.
pub struct SeedGuard {
    seed: u64,
    rerun: String,
}

impl SeedGuard {
    /// `rerun` is the command that reruns the test, e.g.
    /// `cargo test -p ringmq-shards --test power_loss -- power_loss_fsync`.
    pub fn new(seed: u64, rerun: impl Into<String>) -> SeedGuard {
        SeedGuard {
            seed,
            rerun: rerun.into(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILED with seed {seed} ({seed:#x}); rerun just this seed with:\n  RINGMQ_SEED={seed} {}",
                self.rerun,
                seed = self.seed
            );
        }
    }
}

/// Which files the injected I/O errors apply to (power loss always applies
/// to every file opened through the wrapper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultScope {
    /// Only segment files (`*.log`).
    #[default]
    LogFiles,
    /// Every file.
    All,
}

/// What `fdatasync` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncFault {
    /// Real fdatasync.
    #[default]
    None,
    /// Fails with EIO; nothing becomes durable.
    Eio,
    /// The EIO is swallowed: reports success, nothing becomes durable (a
    /// storage stack that lies; for negative controls).
    SwallowedEio,
}

/// What `write_at` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteFault {
    #[default]
    None,
    /// Fails with ENOSPC, writing nothing, until [`FaultHandle::free_space`].
    NoSpace,
    /// Fails with EIO, writing nothing.
    Eio,
}

/// How a power loss may tear the last write it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TearMode {
    /// Each of the others at random.
    #[default]
    Mixed,
    /// Never torn: whole writes are kept or dropped.
    None,
    /// Cut at a random byte; the file ends there if it grew.
    Prefix,
    /// Cut at a random 512-byte sector boundary.
    Sector,
    /// Cut at a random byte, but the file keeps the size the write gave it:
    /// the part that did not make it reads back as zeros.
    ZeroedRest,
}

/// Counters of what the wrapper did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub writes: u64,
    /// Successful preallocations (`allocate` that changed the file).
    pub allocations: u64,
    pub fdatasyncs: u64,
    pub injected_enospc: u64,
    pub injected_write_eio: u64,
    pub injected_sync_eio: u64,
    pub swallowed_sync_eio: u64,
    pub misdirected_writes: u64,
    pub power_losses: u64,
    /// Over all power losses: data operations pending (not covered by an
    /// fdatasync), kept whole, torn, dropped.
    pub pending_ops: u64,
    pub kept_ops: u64,
    pub torn_ops: u64,
    pub dropped_ops: u64,
    /// Over all power losses: directory operations pending and dropped.
    pub pending_dir_ops: u64,
    pub dropped_dir_ops: u64,
}

/// What one power loss did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    pub files: usize,
    pub pending_ops: usize,
    pub kept_ops: usize,
    pub torn_ops: usize,
    pub dropped_ops: usize,
    pub pending_dir_ops: usize,
    pub dropped_dir_ops: usize,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write {
        pos: u64,
        data: Vec<u8>,
    },
    Truncate(u64),
    /// fallocate mode 0 up to `end`: the file grows (with zeros), never
    /// shrinks.
    Allocate {
        end: u64,
    },
}

fn apply(image: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { pos, data } => {
            let pos = *pos as usize;
            if image.len() < pos + data.len() {
                image.resize(pos + data.len(), 0);
            }
            image[pos..pos + data.len()].copy_from_slice(data);
        }
        DataOp::Truncate(len) => image.resize(*len as usize, 0),
        DataOp::Allocate { end } => {
            if image.len() < *end as usize {
                image.resize(*end as usize, 0);
            }
        }
    }
}

#[derive(Debug, Default)]
struct FileModel {
    /// Content as of the last successful fdatasync.
    durable: Vec<u8>,
    /// Operations since, in issue order, with their sequence numbers.
    pending: Vec<(u64, DataOp)>,
}

type Model = Rc<RefCell<FileModel>>;

#[derive(Debug, Clone)]
enum DirOp {
    Create(PathBuf, Model),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        let under = |p: &Path| p.parent() == Some(dir);
        match self {
            DirOp::Create(p, _) | DirOp::Remove(p) => under(p),
            DirOp::Rename(a, b) => under(a) || under(b),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Model>) {
        match self {
            DirOp::Create(p, m) => {
                names.insert(p.clone(), m.clone());
            }
            DirOp::Remove(p) => {
                names.remove(p);
            }
            DirOp::Rename(a, b) => {
                if let Some(m) = names.remove(a) {
                    names.insert(b.clone(), m);
                }
            }
        }
    }
}

#[derive(Default)]
struct Config {
    scope: FaultScope,
    write: WriteFault,
    sync: SyncFault,
    tear: TearMode,
    misdirect: Option<i64>,
    /// `allocate` answers "not supported" (like EOPNOTSUPP) for every file.
    refuse_allocate: bool,
}

struct State {
    rng: SimRng,
    config: Config,
    /// Current namespace of the files the wrapper knows.
    names: BTreeMap<PathBuf, Model>,
    /// Namespace as of the last `sync_dir` of each directory.
    durable_names: BTreeMap<PathBuf, Model>,
    dir_journal: Vec<DirOp>,
    next_seq: u64,
    stats: FaultStats,
}

struct Shared {
    seed: u64,
    inner: StorageRef,
    state: RefCell<State>,
    /// Bumped by every power loss; handles of older epochs are dead.
    epoch: Cell<u64>,
    powered_off: Cell<bool>,
    in_flight: Cell<usize>,
    idle: Event,
}

fn power_off_error() -> io::Error {
    io::Error::other("simulated power loss: this handle belongs to the machine before the crash")
}

impl Shared {
    fn check(&self, epoch: u64) -> io::Result<()> {
        if self.powered_off.get() || self.epoch.get() != epoch {
            Err(power_off_error())
        } else {
            Ok(())
        }
    }

    fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    fn end(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.in_flight.get() == 0 {
            self.idle.notify(usize::MAX);
        }
    }

    /// The model of `path`, loaded from the real file if the wrapper has not
    /// seen it yet (then it counts as durable, as it was there before).
    fn model_of(&self, path: &Path) -> Option<Model> {
        let mut st = self.state.borrow_mut();
        if let Some(m) = st.names.get(path) {
            return Some(m.clone());
        }
        let content = std::fs::read(path).ok()?;
        let m = Rc::new(RefCell::new(FileModel {
            durable: content,
            pending: Vec::new(),
        }));
        st.names.insert(path.to_path_buf(), m.clone());
        st.durable_names
            .entry(path.to_path_buf())
            .or_insert_with(|| m.clone());
        Some(m)
    }

    fn in_scope(&self, path: &Path) -> bool {
        match self.state.borrow().config.scope {
            FaultScope::All => true,
            FaultScope::LogFiles => path.extension().is_some_and(|e| e == "log"),
        }
    }

    fn push_op(&self, model: &Model, op: DataOp) -> u64 {
        let mut st = self.state.borrow_mut();
        let seq = st.next_seq;
        st.next_seq += 1;
        model.borrow_mut().pending.push((seq, op));
        seq
    }

    fn forget_op(model: &Model, seq: u64) {
        model.borrow_mut().pending.retain(|(s, _)| *s != seq);
    }
}

/// A fault-injecting storage around another one. Build it with
/// [`FaultyStorage::wrap`]; control it through the [`FaultHandle`].
pub struct FaultyStorage {
    inner: StorageRef,
    shared: Rc<Shared>,
    /// The power cycle this handle belongs to.
    epoch: u64,
}

/// Shared control handle of a [`FaultyStorage`] (cheap to clone).
#[derive(Clone)]
pub struct FaultHandle {
    shared: Rc<Shared>,
}

impl FaultyStorage {
    /// Wraps `inner`; every random decision derives from `seed`.
    pub fn wrap(inner: StorageRef, seed: u64) -> (StorageRef, FaultHandle) {
        let shared = Rc::new(Shared {
            seed,
            inner: inner.clone(),
            state: RefCell::new(State {
                rng: SimRng::new(seed ^ 0xFA17_FA17_FA17_FA17),
                config: Config::default(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dir_journal: Vec::new(),
                next_seq: 0,
                stats: FaultStats::default(),
            }),
            epoch: Cell::new(0),
            powered_off: Cell::new(false),
            in_flight: Cell::new(0),
            idle: Event::new(),
        });
        let handle = FaultHandle { shared };
        (handle.storage(), handle)
    }
}

impl FaultHandle {
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// A storage handle for the current power cycle. After
    /// [`Self::power_loss`] the handles of earlier cycles (and every file
    /// opened through them) fail every operation: take a new one to
    /// "reboot" and recover.
    pub fn storage(&self) -> StorageRef {
        Rc::new(FaultyStorage {
            inner: self.shared.inner.clone(),
            shared: self.shared.clone(),
            epoch: self.shared.epoch.get(),
        })
    }

    pub fn stats(&self) -> FaultStats {
        self.shared.state.borrow().stats
    }

    /// Which files I/O errors are injected into (default: `*.log`).
    pub fn set_scope(&self, scope: FaultScope) {
        self.shared.state.borrow_mut().config.scope = scope;
    }

    pub fn set_write_fault(&self, fault: WriteFault) {
        self.shared.state.borrow_mut().config.write = fault;
    }

    pub fn set_sync_fault(&self, fault: SyncFault) {
        self.shared.state.borrow_mut().config.sync = fault;
    }

    pub fn set_tear_mode(&self, mode: TearMode) {
        self.shared.state.borrow_mut().config.tear = mode;
    }

    /// Every `allocate` from now on reports "not supported" and changes
    /// nothing (a filesystem without fallocate).
    pub fn refuse_allocate(&self) {
        self.shared.state.borrow_mut().config.refuse_allocate = true;
    }

    /// The disk is full: writes (and preallocations) fail with ENOSPC until
    /// [`Self::free_space`].
    pub fn fill_disk(&self) {
        self.set_write_fault(WriteFault::NoSpace);
    }

    /// Space was freed: writes succeed again.
    pub fn free_space(&self) {
        let mut st = self.shared.state.borrow_mut();
        if st.config.write == WriteFault::NoSpace {
            st.config.write = WriteFault::None;
        }
    }

    /// Clears every injected I/O error (not the power-loss model).
    pub fn heal(&self) {
        let mut st = self.shared.state.borrow_mut();
        st.config.write = WriteFault::None;
        st.config.sync = SyncFault::None;
        st.config.misdirect = None;
    }

    /// The next in-scope write lands `delta` bytes away from where it was
    /// aimed (clamped at 0) and reports success.
    pub fn misdirect_next_write(&self, delta: i64) {
        self.shared.state.borrow_mut().config.misdirect = Some(delta);
    }

    /// Data operations not yet covered by an fdatasync, over every file.
    pub fn pending_ops(&self) -> usize {
        self.shared
            .state
            .borrow()
            .names
            .values()
            .map(|m| m.borrow().pending.len())
            .sum()
    }

    /// Cuts the power: waits for the operations already issued to the inner
    /// storage, fails every later operation on every handle opened so far,
    /// and rewrites the real files with what a disk may hold after the
    /// crash (see the module docs). New opens work again when it returns.
    pub async fn power_loss(&self) -> PowerLossReport {
        let sh = &self.shared;
        sh.powered_off.set(true);
        loop {
            let listener = sh.idle.listen();
            if sh.in_flight.get() == 0 {
                break;
            }
            listener.await;
        }
        let report = self.crash_image();
        sh.epoch.set(sh.epoch.get() + 1);
        sh.powered_off.set(false);
        report
    }

    fn crash_image(&self) -> PowerLossReport {
        let mut st = self.shared.state.borrow_mut();
        let st = &mut *st;
        let mut report = PowerLossReport::default();
        // Directory operations: a random prefix of the journal survives.
        let journal = std::mem::take(&mut st.dir_journal);
        let keep = st.rng.below(journal.len() as u64 + 1) as usize;
        report.pending_dir_ops = journal.len();
        report.dropped_dir_ops = journal.len() - keep;
        let mut final_names = st.durable_names.clone();
        for op in &journal[..keep] {
            op.apply(&mut final_names);
        }
        // Every path that may exist on disk now.
        let mut paths: BTreeSet<PathBuf> = st.names.keys().cloned().collect();
        paths.extend(st.durable_names.keys().cloned());
        paths.extend(final_names.keys().cloned());
        for op in &journal {
            match op {
                DirOp::Create(p, _) | DirOp::Remove(p) => {
                    paths.insert(p.clone());
                }
                DirOp::Rename(a, b) => {
                    paths.insert(a.clone());
                    paths.insert(b.clone());
                }
            }
        }
        // Data: per file, a random prefix of the pending operations, the
        // first dropped one possibly torn.
        let mut images: Vec<(*const RefCell<FileModel>, Vec<u8>)> = Vec::new();
        for model in final_names.values() {
            let key = Rc::as_ptr(model);
            if images.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let mut m = model.borrow_mut();
            let mut image = std::mem::take(&mut m.durable);
            let pending = std::mem::take(&mut m.pending);
            let n = pending.len();
            let kept = st.rng.below(n as u64 + 1) as usize;
            report.files += 1;
            report.pending_ops += n;
            report.kept_ops += kept;
            report.dropped_ops += n - kept;
            for (_, op) in &pending[..kept] {
                apply(&mut image, op);
            }
            if kept < n {
                if let DataOp::Write { pos, data } = &pending[kept].1 {
                    if let Some(torn) = tear(&mut st.rng, st.config.tear, *pos, data, &image) {
                        report.torn_ops += 1;
                        report.dropped_ops -= 1;
                        image = torn;
                    }
                }
            }
            m.durable = image.clone();
            images.push((key, image));
        }
        for path in &paths {
            match final_names.get(path) {
                Some(model) => {
                    let key = Rc::as_ptr(model);
                    let image = &images.iter().find(|(k, _)| *k == key).expect("image").1;
                    if let Some(parent) = path.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    std::fs::write(path, image).unwrap_or_else(|e| {
                        panic!("power loss: rewriting {}: {e}", path.display())
                    });
                }
                None => match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => panic!("power loss: removing {}: {e}", path.display()),
                },
            }
        }
        st.names = final_names.clone();
        st.durable_names = final_names;
        let s = &mut st.stats;
        s.power_losses += 1;
        s.pending_ops += report.pending_ops as u64;
        s.kept_ops += report.kept_ops as u64;
        s.torn_ops += report.torn_ops as u64;
        s.dropped_ops += report.dropped_ops as u64;
        s.pending_dir_ops += report.pending_dir_ops as u64;
        s.dropped_dir_ops += report.dropped_dir_ops as u64;
        report
    }

    /// Applies `f` to the real content of `path` and to its durable image
    /// (latent damage: it survives later power losses). Use on a quiescent
    /// store (no log open on it, or after a power loss).
    pub fn corrupt(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut content = std::fs::read(path)?;
        f(&mut content);
        std::fs::write(path, &content)?;
        if let Some(model) = self.shared.state.borrow().names.get(path) {
            let mut m = model.borrow_mut();
            m.pending.clear();
            m.durable = content;
        }
        Ok(())
    }

    /// XORs `mask` into the byte at `position`.
    pub fn flip_bit(&self, path: &Path, position: u64, mask: u8) -> io::Result<()> {
        self.corrupt(path, |c| c[position as usize] ^= mask)
    }

    /// Copies `len` bytes at `from` over the bytes at `to` (a misplaced
    /// block: its content duplicated elsewhere).
    pub fn copy_block(&self, path: &Path, from: u64, to: u64, len: usize) -> io::Result<()> {
        self.corrupt(path, |c| {
            let block = c[from as usize..from as usize + len].to_vec();
            if c.len() < to as usize + len {
                c.resize(to as usize + len, 0);
            }
            c[to as usize..to as usize + len].copy_from_slice(&block);
        })
    }

    /// Cuts the file at `len` bytes (a torn tail at any byte).
    pub fn truncate_file(&self, path: &Path, len: u64) -> io::Result<()> {
        self.corrupt(path, |c| c.truncate(len as usize))
    }

    /// Appends `count` zero bytes (a tail whose size reached the disk but
    /// whose data did not).
    pub fn append_zeros(&self, path: &Path, count: usize) -> io::Result<()> {
        self.corrupt(path, |c| c.resize(c.len() + count, 0))
    }
}

/// The image after `data` at `pos` was only partly written over `image`, or
/// `None` when the mode never tears (the write is dropped whole).
fn tear(rng: &mut SimRng, mode: TearMode, pos: u64, data: &[u8], image: &[u8]) -> Option<Vec<u8>> {
    let mode = match mode {
        TearMode::None => return None,
        TearMode::Mixed => match rng.below(4) {
            0 => return None,
            1 => TearMode::Prefix,
            2 => TearMode::Sector,
            _ => TearMode::ZeroedRest,
        },
        m => m,
    };
    if data.is_empty() {
        return None;
    }
    let cut = match mode {
        TearMode::Sector => {
            let sectors = data.len().div_ceil(512) as u64;
            ((rng.below(sectors) * 512) as usize).min(data.len())
        }
        _ => rng.below(data.len() as u64) as usize,
    };
    let mut out = image.to_vec();
    apply(
        &mut out,
        &DataOp::Write {
            pos,
            data: data[..cut].to_vec(),
        },
    );
    if mode == TearMode::ZeroedRest {
        let end = pos as usize + data.len();
        if out.len() < end {
            out.resize(end, 0);
        }
    }
    Some(out)
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> IoFuture<'_, FileRef> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let sh = &self.shared;
            let epoch = self.epoch;
            sh.check(epoch)?;
            let known = sh.state.borrow().names.contains_key(&path);
            // Load the pre-existing content before a truncating open.
            let existing = if known { None } else { sh.model_of(&path) };
            sh.begin();
            let opened = self.inner.open(&path, mode).await;
            let result = opened.map(|inner| {
                let found = sh.state.borrow().names.get(&path).cloned();
                let model = match found {
                    Some(m) => m,
                    None => {
                        // Created by this open.
                        let m: Model = Rc::default();
                        let mut st = sh.state.borrow_mut();
                        st.names.insert(path.clone(), m.clone());
                        st.dir_journal.push(DirOp::Create(path.clone(), m.clone()));
                        m
                    }
                };
                if mode == OpenMode::CreateTruncate && (known || existing.is_some()) {
                    sh.push_op(&model, DataOp::Truncate(0));
                }
                let log_file = path.extension().is_some_and(|e| e == "log");
                Rc::new(FaultyFile {
                    inner,
                    shared: sh.clone(),
                    model,
                    epoch,
                    log_file,
                }) as FileRef
            });
            sh.end();
            sh.check(epoch)?;
            result
        })
    }

    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let epoch = self.epoch;
            self.shared.check(epoch)?;
            self.shared.begin();
            let r = self.inner.create_dir_all(&path).await;
            self.shared.end();
            r
        })
    }

    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let sh = &self.shared;
            let epoch = self.epoch;
            sh.check(epoch)?;
            sh.model_of(&path);
            sh.begin();
            let r = self.inner.remove_file(&path).await;
            if r.is_ok() {
                let mut st = sh.state.borrow_mut();
                st.names.remove(&path);
                st.dir_journal.push(DirOp::Remove(path.clone()));
            }
            sh.end();
            r
        })
    }

    fn remove_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let sh = &self.shared;
            let epoch = self.epoch;
            sh.check(epoch)?;
            sh.begin();
            let r = self.inner.remove_dir_all(&path).await;
            if r.is_ok() {
                let mut st = sh.state.borrow_mut();
                let gone: Vec<PathBuf> = st
                    .names
                    .keys()
                    .filter(|p| p.starts_with(&path))
                    .cloned()
                    .collect();
                for p in gone {
                    st.names.remove(&p);
                    st.dir_journal.push(DirOp::Remove(p));
                }
            }
            sh.end();
            r
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        Box::pin(async move {
            let sh = &self.shared;
            let epoch = self.epoch;
            sh.check(epoch)?;
            sh.model_of(&from);
            sh.model_of(&to);
            sh.begin();
            let r = self.inner.rename(&from, &to).await;
            if r.is_ok() {
                let mut st = sh.state.borrow_mut();
                let op = DirOp::Rename(from.clone(), to.clone());
                op.apply(&mut st.names);
                st.dir_journal.push(op);
            }
            sh.end();
            r
        })
    }

    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<DirEntry>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let epoch = self.epoch;
            self.shared.check(epoch)?;
            self.shared.begin();
            let r = self.inner.list_dir(&path).await;
            self.shared.end();
            r
        })
    }

    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let sh = &self.shared;
            let epoch = self.epoch;
            sh.check(epoch)?;
            // Only the operations issued before the sync are covered.
            let issued = sh.state.borrow().dir_journal.len();
            sh.begin();
            let r = self.inner.sync_dir(&path).await;
            sh.end();
            sh.check(epoch)?;
            if r.is_ok() {
                let mut st = sh.state.borrow_mut();
                let st = &mut *st;
                let journal = std::mem::take(&mut st.dir_journal);
                for (i, op) in journal.into_iter().enumerate() {
                    if i < issued && op.touches(&path) {
                        op.apply(&mut st.durable_names);
                    } else {
                        st.dir_journal.push(op);
                    }
                }
            }
            r
        })
    }
}

struct FaultyFile {
    inner: FileRef,
    shared: Rc<Shared>,
    model: Model,
    epoch: u64,
    log_file: bool,
}

impl FaultyFile {
    fn in_scope(&self) -> bool {
        self.log_file || self.shared.in_scope(self.inner.path())
    }
}

impl StorageFile for FaultyFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }

    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }

    fn alloc_buf(&self, len: usize) -> IoBuf {
        self.inner.alloc_buf(len)
    }

    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            let sh = &self.shared;
            sh.check(self.epoch)?;
            let len = buf.len();
            let mut target = pos;
            if self.in_scope() {
                let mut st = sh.state.borrow_mut();
                match st.config.write {
                    WriteFault::NoSpace => {
                        st.stats.injected_enospc += 1;
                        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                    }
                    WriteFault::Eio => {
                        st.stats.injected_write_eio += 1;
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    WriteFault::None => {}
                }
                if let Some(delta) = st.config.misdirect.take() {
                    let align = self.inner.alignment().max(1) as i64;
                    let to = (pos as i64 + delta).max(0);
                    target = (to - to % align) as u64;
                    st.stats.misdirected_writes += 1;
                }
            }
            sh.state.borrow_mut().stats.writes += 1;
            let seq = sh.push_op(
                &self.model,
                DataOp::Write {
                    pos: target,
                    data: buf.as_slice().to_vec(),
                },
            );
            sh.begin();
            let r = self.inner.write_at(buf, target).await;
            match &r {
                Ok(n) if *n == len => {}
                Ok(n) => {
                    // Short write: model what reached the file.
                    let mut m = self.model.borrow_mut();
                    if let Some((_, DataOp::Write { data, .. })) =
                        m.pending.iter_mut().find(|(s, _)| *s == seq)
                    {
                        data.truncate(*n);
                    }
                }
                Err(_) => Shared::forget_op(&self.model, seq),
            }
            sh.end();
            sh.check(self.epoch)?;
            r
        })
    }

    fn allocate(&self, pos: u64, len: u64) -> IoFuture<'_, bool> {
        Box::pin(async move {
            let sh = &self.shared;
            sh.check(self.epoch)?;
            {
                let mut st = sh.state.borrow_mut();
                if st.config.refuse_allocate {
                    return Ok(false);
                }
                if self.in_scope() && st.config.write == WriteFault::NoSpace {
                    st.stats.injected_enospc += 1;
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
            }
            let seq = sh.push_op(&self.model, DataOp::Allocate { end: pos + len });
            sh.begin();
            let r = self.inner.allocate(pos, len).await;
            match &r {
                Ok(true) => sh.state.borrow_mut().stats.allocations += 1,
                // Nothing changed on disk (unsupported, or failed).
                Ok(false) | Err(_) => Shared::forget_op(&self.model, seq),
            }
            sh.end();
            sh.check(self.epoch)?;
            r
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            self.shared.check(self.epoch)?;
            self.shared.begin();
            let r = self.inner.read_at(pos, len).await;
            self.shared.end();
            self.shared.check(self.epoch)?;
            r
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let sh = &self.shared;
            sh.check(self.epoch)?;
            if self.in_scope() {
                let mut st = sh.state.borrow_mut();
                match st.config.sync {
                    SyncFault::Eio => {
                        st.stats.injected_sync_eio += 1;
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    SyncFault::SwallowedEio => {
                        st.stats.swallowed_sync_eio += 1;
                        return Ok(());
                    }
                    SyncFault::None => {}
                }
            }
            // Covers what was issued before it started.
            let issued = sh.state.borrow().next_seq;
            sh.begin();
            let r = self.inner.fdatasync().await;
            sh.end();
            sh.check(self.epoch)?;
            if r.is_ok() {
                sh.state.borrow_mut().stats.fdatasyncs += 1;
                let mut m = self.model.borrow_mut();
                let m = &mut *m;
                let n = m.pending.partition_point(|(s, _)| *s < issued);
                for (_, op) in m.pending.drain(..n) {
                    apply(&mut m.durable, &op);
                }
            }
            r
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let sh = &self.shared;
            sh.check(self.epoch)?;
            let seq = sh.push_op(&self.model, DataOp::Truncate(len));
            sh.begin();
            let r = self.inner.truncate(len).await;
            if r.is_err() {
                Shared::forget_op(&self.model, seq);
            }
            sh.end();
            sh.check(self.epoch)?;
            r
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            self.shared.check(self.epoch)?;
            self.shared.begin();
            let r = self.inner.size().await;
            self.shared.end();
            self.shared.check(self.epoch)?;
            r
        })
    }

    fn close(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.shared.begin();
            let r = self.inner.close().await;
            self.shared.end();
            r
        })
    }
}
