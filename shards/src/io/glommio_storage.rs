//! [`Storage`] on glommio: `DmaFile` (O_DIRECT via io_uring) with a
//! `BufferedFile` fallback for filesystems that refuse O_DIRECT, and
//! directory operations on glommio's blocking thread pool. Large write
//! buffers are reused through a small per-storage (per-shard) pool.

use super::{
    DirEntry, FileRef, IoBuf, IoFuture, LocalBuf, OpenMode, Storage, StorageFile, BLOCK_SIZE,
};
use bytes::Bytes;
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
    rc::Rc,
};

/// Converts a glommio error into an `io::Error`, keeping the OS error code
/// (so ENOSPC and EIO can be told apart) and the path glommio attached.
fn to_io<T>(err: glommio::GlommioError<T>) -> io::Error {
    match err {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

fn closed_error(path: &Path) -> io::Error {
    io::Error::other(format!("{}: file already closed", path.display()))
}

/// The production storage: glommio files on the local filesystem.
#[derive(Debug, Default)]
pub struct GlommioStorage {
    /// Never try O_DIRECT (tests of the fallback path, page-cache setups).
    force_buffered: bool,
    /// Directories for which the O_DIRECT refusal was already logged.
    warned_dirs: RefCell<HashSet<PathBuf>>,
    /// Devices (st_dev) whose io_uring poll support glommio has probed on
    /// this thread with a non-empty file.
    probed_devices: RefCell<HashSet<u64>>,
    /// Whether preallocation (`allocate`) is worth doing on each device
    /// (st_dev) seen on this thread: not on tmpfs or ramfs, where it only
    /// pins memory early and no io_uring write waits for block allocation.
    preallocate_devices: RefCell<HashMap<u64, bool>>,
    buffered_opens: Cell<u64>,
    /// Large DMA write buffers of recent writes, for reuse.
    write_bufs: Rc<WriteBufPool>,
}

/// Writes at least this large get their buffer from [`WriteBufPool`]
/// (smaller ones are cheap, and glommio serves them from its registered
/// io_memory arena).
pub const POOLED_WRITE_MIN_BYTES: usize = 256 << 10;
/// At most this many idle buffers are kept: one write is in flight per
/// partition, so a few buffers cover the busy partitions of a shard.
const POOL_MAX_BUFFERS: usize = 4;
/// At most this many bytes of idle buffers are kept per shard (about four
/// writes of the default 4 MiB `max_write_bytes`): bounded memory held
/// idle, small next to a partition's 64 MiB write queue.
const POOL_MAX_BYTES: usize = 16 << 20;

/// Idle DMA buffers of large writes, by exact length: a glommio
/// `DmaBuffer` cannot be lengthened again once trimmed, and a write sends
/// the whole buffer, so only a write of the same length can reuse one (the
/// log rounds large writes up to a length class for that; see
/// `partition::write_once`). Why: a fresh multi-megabyte buffer per write is
/// fresh memory from malloc, and its first touch by the copy page-faults
/// (measured: half of the broker's page faults in W1).
#[derive(Debug, Default)]
struct WriteBufPool {
    /// Most recently returned last.
    idle: RefCell<Vec<glommio::io::DmaBuffer>>,
    idle_bytes: Cell<usize>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl WriteBufPool {
    fn take(&self, len: usize) -> Option<glommio::io::DmaBuffer> {
        let mut idle = self.idle.borrow_mut();
        match idle.iter().rposition(|b| b.len() == len) {
            Some(i) => {
                let buf = idle.remove(i);
                self.idle_bytes.set(self.idle_bytes.get() - len);
                self.hits.set(self.hits.get() + 1);
                Some(buf)
            }
            None => {
                self.misses.set(self.misses.get() + 1);
                None
            }
        }
    }

    fn put(&self, buf: glommio::io::DmaBuffer) {
        let len = buf.len();
        if !(POOLED_WRITE_MIN_BYTES..=POOL_MAX_BYTES).contains(&len) {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        idle.push(buf);
        let mut bytes = self.idle_bytes.get() + len;
        // Oldest first out, down to the bounds.
        while idle.len() > POOL_MAX_BUFFERS || bytes > POOL_MAX_BYTES {
            bytes -= idle.remove(0).len();
        }
        self.idle_bytes.set(bytes);
        debug_assert!(idle.len() <= POOL_MAX_BUFFERS && bytes <= POOL_MAX_BYTES);
    }
}

/// The device and filesystem facts an open needs about a directory.
#[derive(Debug, Clone, Copy)]
struct DirFacts {
    dev: u64,
    /// Not a memory filesystem (tmpfs, ramfs).
    preallocate: bool,
}

/// stat + statfs of `dir` (blocking: run it on the blocking pool).
fn dir_facts(dir: &Path) -> io::Result<DirFacts> {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    let dev = std::fs::metadata(dir)?.dev();
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_dir` is a NUL-terminated path and `buf` a properly sized,
    // zero-initialized statfs that the call fills in.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_dir.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // linux/magic.h; libc has no RAMFS_MAGIC.
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let memory_fs = buf.f_type == libc::TMPFS_MAGIC || buf.f_type as u32 == RAMFS_MAGIC;
    Ok(DirFacts {
        dev,
        preallocate: !memory_fs,
    })
}

/// Logs, once per process, that a filesystem refused preallocation.
fn note_allocate_unsupported(path: &Path) {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            file = %path.display(),
            "the filesystem does not support fallocate (EOPNOTSUPP): segments are not \
             preallocated, appends extend the file (slower: io_uring completes them on a \
             kernel worker thread)"
        );
    }
}

impl GlommioStorage {
    /// O_DIRECT where the filesystem allows it, buffered I/O elsewhere.
    pub fn new() -> Rc<GlommioStorage> {
        Rc::new(GlommioStorage::default())
    }

    /// Always buffered (page cache) I/O.
    pub fn buffered() -> Rc<GlommioStorage> {
        Rc::new(GlommioStorage {
            force_buffered: true,
            ..GlommioStorage::default()
        })
    }

    /// How many files were opened with buffered I/O (fallback or forced).
    pub fn buffered_opens(&self) -> u64 {
        self.buffered_opens.get()
    }

    /// Large write buffers reused from the pool, and allocated fresh.
    pub fn write_buffer_reuse(&self) -> (u64, u64) {
        (self.write_bufs.hits.get(), self.write_bufs.misses.get())
    }

    fn options(mode: OpenMode) -> OpenOptions {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::ReadOnly => {
                o.read(true);
            }
            OpenMode::ReadWrite => {
                o.read(true).write(true);
            }
            OpenMode::CreateOrOpen => {
                o.read(true).write(true).create(true);
            }
            OpenMode::CreateTruncate => {
                o.read(true).write(true).create(true).truncate(true);
            }
        }
        o
    }

    /// Facts about the directory's device, learned once per device on this
    /// thread (a stat per open, on the blocking pool, as before).
    async fn facts(&self, dir: &Path) -> Option<DirFacts> {
        use std::os::unix::fs::MetadataExt;
        let meta_dir = dir.to_path_buf();
        let dev = blocking(move || std::fs::metadata(meta_dir).map(|m| m.dev()))
            .await
            .ok()?;
        if let Some(&preallocate) = self.preallocate_devices.borrow().get(&dev) {
            return Some(DirFacts { dev, preallocate });
        }
        let facts_dir = dir.to_path_buf();
        let facts = blocking(move || dir_facts(&facts_dir)).await.ok()?;
        if !facts.preallocate {
            tracing::info!(
                dir = %dir.display(),
                "memory filesystem (tmpfs/ramfs): segments are not preallocated"
            );
        }
        self.preallocate_devices
            .borrow_mut()
            .insert(facts.dev, facts.preallocate);
        Some(facts)
    }

    /// glommio decides once per device and thread whether O_DIRECT reads may
    /// go to the io_uring poll ring (IOPOLL), by reading the first block of
    /// the first file it opens there. When that file is empty the read
    /// "succeeds" without touching the device, glommio wrongly enables
    /// IOPOLL, and every later read of real data fails with EOPNOTSUPP on
    /// devices without poll queues (virtio here). So before the first
    /// O_DIRECT open on a device, open a one-block probe file ourselves.
    async fn probe_device(&self, dir: &Path, dev: u64) {
        if !self.probed_devices.borrow_mut().insert(dev) {
            return;
        }
        let dir = dir.to_path_buf();
        // Unique per process, thread (shard) and call: shards probe the same
        // directory at the same time at start-up, and glommio panics (statfs
        // unwrap in DmaFile::open) if the path vanishes under its open.
        static PROBE_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let sequence = PROBE_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = dir.join(format!(
            ".ringmq-dma-probe-{}-{sequence}",
            std::process::id()
        ));
        let probe_w = probe.clone();
        if blocking(move || std::fs::write(probe_w, vec![0u8; BLOCK_SIZE]))
            .await
            .is_err()
        {
            return;
        }
        if let Ok(f) = OpenOptions::new().read(true).dma_open(&probe).await {
            let _ = f.close().await;
        }
        let _ = blocking(move || std::fs::remove_file(probe)).await;
    }

    async fn open_impl(&self, path: PathBuf, mode: OpenMode) -> io::Result<FileRef> {
        let opts = Self::options(mode);
        let facts = match path.parent() {
            Some(dir) => self.facts(dir).await,
            None => None,
        };
        // Unknown filesystem (the stat failed): try, `allocate` falls back.
        let preallocate = facts.map(|f| f.preallocate).unwrap_or(true);
        if !self.force_buffered {
            if let (Some(dir), Some(facts)) = (path.parent(), facts) {
                self.probe_device(dir, facts.dev).await;
            }
            match opts.dma_open(&path).await {
                Ok(file) => {
                    let alignment = (file.alignment() as usize).max(512);
                    debug_assert!(alignment.is_power_of_two() && alignment <= BLOCK_SIZE);
                    return Ok(Rc::new(GlommioFile {
                        path,
                        alignment,
                        preallocate: Cell::new(preallocate),
                        write_bufs: self.write_bufs.clone(),
                        inner: RefCell::new(Some(Inner::Dma(Rc::new(file)))),
                    }));
                }
                Err(err) => {
                    let err = to_io(err);
                    if err.raw_os_error() != Some(libc::EINVAL) {
                        return Err(err);
                    }
                    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                    if self.warned_dirs.borrow_mut().insert(dir.clone()) {
                        tracing::warn!(
                            dir = %dir.display(),
                            "the filesystem refuses O_DIRECT (EINVAL); using buffered I/O \
                             through the page cache for files in this directory"
                        );
                    }
                }
            }
        }
        let file = opts.buffered_open(&path).await.map_err(to_io)?;
        self.buffered_opens.set(self.buffered_opens.get() + 1);
        Ok(Rc::new(GlommioFile {
            path,
            alignment: 1,
            preallocate: Cell::new(preallocate),
            write_bufs: self.write_bufs.clone(),
            inner: RefCell::new(Some(Inner::Buffered(Rc::new(file)))),
        }))
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    glommio::executor().spawn_blocking(f).await
}

impl Storage for GlommioStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> IoFuture<'_, FileRef> {
        Box::pin(self.open_impl(path.to_path_buf(), mode))
    }

    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::create_dir_all(path)))
    }

    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move { glommio::io::remove(&path).await.map_err(to_io) })
    }

    fn remove_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::remove_dir_all(path)))
    }

    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        Box::pin(async move { glommio::io::rename(&from, &to).await.map_err(to_io) })
    }

    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<DirEntry>> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let is_dir = entry.file_type()?.is_dir();
                out.push(DirEntry { name, is_dir });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }))
    }

    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::File::open(path)?.sync_all()))
    }
}

enum Inner {
    Dma(Rc<DmaFile>),
    Buffered(Rc<BufferedFile>),
}

impl Clone for Inner {
    fn clone(&self) -> Self {
        match self {
            Inner::Dma(f) => Inner::Dma(f.clone()),
            Inner::Buffered(f) => Inner::Buffered(f.clone()),
        }
    }
}

/// One open glommio file. The handle is shared (`Rc`) by every operation in
/// flight, so `close` never pulls a descriptor from under a concurrent read:
/// the descriptor is closed when the last operation finishes.
struct GlommioFile {
    path: PathBuf,
    alignment: usize,
    /// `allocate` is worth trying: false on memory filesystems and once the
    /// filesystem answered EOPNOTSUPP.
    preallocate: Cell<bool>,
    write_bufs: Rc<WriteBufPool>,
    inner: RefCell<Option<Inner>>,
}

impl GlommioFile {
    fn get(&self) -> io::Result<Inner> {
        self.inner
            .borrow()
            .clone()
            .ok_or_else(|| closed_error(&self.path))
    }
}

impl StorageFile for GlommioFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn is_direct(&self) -> bool {
        matches!(*self.inner.borrow(), Some(Inner::Dma(_)))
    }

    fn alloc_buf(&self, len: usize) -> IoBuf {
        match self.get() {
            Ok(Inner::Dma(f)) if len >= POOLED_WRITE_MIN_BYTES => IoBuf::Dma(
                self.write_bufs
                    .take(len)
                    .unwrap_or_else(|| f.alloc_dma_buffer(len)),
            ),
            Ok(Inner::Dma(f)) if len > 0 => IoBuf::Dma(f.alloc_dma_buffer(len)),
            _ => IoBuf::Heap(vec![0; len]),
        }
    }

    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, usize> {
        Box::pin(async move {
            match self.get()? {
                Inner::Dma(f) => {
                    assert!(
                        (pos | buf.len() as u64) & (self.alignment as u64 - 1) == 0,
                        "unaligned O_DIRECT write: pos {pos} len {}",
                        buf.len()
                    );
                    let dma = match buf {
                        IoBuf::Dma(b) => b,
                        IoBuf::Heap(v) => {
                            let mut b = f.alloc_dma_buffer(v.len());
                            b.as_bytes_mut().copy_from_slice(&v);
                            b
                        }
                    };
                    if dma.len() < POOLED_WRITE_MIN_BYTES {
                        return f.write_at(dma, pos).await.map_err(to_io);
                    }
                    // Shared with the ring while in flight; back to the pool
                    // once glommio dropped its reference (completion).
                    let shared = Rc::new(dma);
                    let result = f.write_rc_at(shared.clone(), pos).await.map_err(to_io);
                    if let Ok(buf) = Rc::try_unwrap(shared) {
                        self.write_bufs.put(buf);
                    }
                    result
                }
                Inner::Buffered(f) => {
                    let v = match buf {
                        IoBuf::Heap(v) => v,
                        IoBuf::Dma(b) => b.as_bytes().to_vec(),
                    };
                    f.write_at(v, pos).await.map_err(to_io)
                }
            }
        })
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            if len == 0 {
                return Ok(Bytes::new());
            }
            // The ReadResult is !Send and pinned to its DMA buffer; one copy
            // into `Bytes` makes it shareable (DESIGN.md 6: <= 5% cost).
            let rr = match self.get()? {
                Inner::Dma(f) => f.read_at(pos, len).await.map_err(to_io)?,
                Inner::Buffered(f) => f.read_at(pos, len).await.map_err(to_io)?,
            };
            Ok(Bytes::copy_from_slice(&rr))
        })
    }

    fn read_at_local(&self, pos: u64, len: usize) -> IoFuture<'_, LocalBuf> {
        Box::pin(async move {
            if len == 0 {
                return Ok(LocalBuf::Shared(Bytes::new()));
            }
            let rr = match self.get()? {
                Inner::Dma(f) => f.read_at(pos, len).await.map_err(to_io)?,
                Inner::Buffered(f) => f.read_at(pos, len).await.map_err(to_io)?,
            };
            Ok(LocalBuf::Glommio(rr))
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self.get()? {
                Inner::Dma(f) => f.fdatasync().await.map_err(to_io),
                Inner::Buffered(f) => f.fdatasync().await.map_err(to_io),
            }
        })
    }

    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self.get()? {
                Inner::Dma(f) => f.truncate(len).await.map_err(to_io),
                Inner::Buffered(f) => f.truncate(len).await.map_err(to_io),
            }
        })
    }

    fn allocate(&self, pos: u64, len: u64) -> IoFuture<'_, bool> {
        Box::pin(async move {
            if !self.preallocate.get() || len == 0 {
                return Ok(false);
            }
            // glommio's pre_allocate(size, false) is fallocate(fd, 0, 0,
            // size) through io_uring (mode 0: the size grows; the kernel
            // skips blocks already allocated, so the range from 0 costs a
            // walk of the extent tree, not a rewrite). io_uring runs it on a
            // worker thread, off this shard.
            let end = pos.checked_add(len).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "allocate range overflows")
            })?;
            let result = match self.get()? {
                Inner::Dma(f) => f.pre_allocate(end, false).await.map_err(to_io),
                Inner::Buffered(f) => f.pre_allocate(end, false).await.map_err(to_io),
            };
            match result {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.preallocate.set(false);
                    note_allocate_unsupported(&self.path);
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            match self.get()? {
                Inner::Dma(f) => f.file_size().await.map_err(to_io),
                Inner::Buffered(f) => f.file_size().await.map_err(to_io),
            }
        })
    }

    fn close(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let inner = self.inner.borrow_mut().take();
            match inner {
                None => Ok(()),
                Some(Inner::Dma(f)) => match Rc::try_unwrap(f) {
                    Ok(f) => f.close().await.map_err(to_io),
                    // Still in use by an operation in flight: closed on drop.
                    Err(_) => Ok(()),
                },
                Some(Inner::Buffered(f)) => match Rc::try_unwrap(f) {
                    Ok(f) => f.close().await.map_err(to_io),
                    Err(_) => Ok(()),
                },
            }
        })
    }
}
