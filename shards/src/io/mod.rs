//! The I/O seam: every file and directory operation the log needs, behind a
//! small object-safe trait, so that tests ([`FaultyStorage`]) can
//! inject torn writes, bit flips, EIO and ENOSPC underneath the storage code.
//!
//! * [`Storage`]: filesystem operations (open, directories, rename, remove).
//! * [`StorageFile`]: one open file (aligned `write_at`, `read_at` into
//!   [`Bytes`], `fdatasync`, `truncate`, `allocate`, `size`, `close`).
//! * [`GlommioStorage`]: the production implementation on glommio `DmaFile`
//!   (O_DIRECT through io_uring), falling back to `BufferedFile` where the
//!   filesystem refuses O_DIRECT.
//! * [`FaultyStorage`] (tests): wraps any storage and injects power loss
//!   (un-fdatasync'd writes dropped or torn), EIO, ENOSPC, misdirected writes
//!   and latent damage, driven by a seed.
//!
//! All futures are boxed local futures ([`IoFuture`]): shard code is
//! single-threaded, and boxing keeps the trait object-safe, so a wrapper is
//! just another `impl Storage` holding an `Rc<dyn Storage>`.

pub mod faulty;
mod glommio_storage;

pub use faulty::{FaultHandle, FaultyStorage};
pub use glommio_storage::{GlommioStorage, POOLED_WRITE_MIN_BYTES};

use bytes::Bytes;
use std::{future::Future, io, path::Path, pin::Pin, rc::Rc};

/// A boxed, non-`Send` future returning an `io::Result`.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// Shared handle to an open file.
pub type FileRef = Rc<dyn StorageFile>;
/// Shared handle to a storage implementation.
pub type StorageRef = Rc<dyn Storage>;

/// Block size the log aligns its writes to. A multiple of every O_DIRECT
/// logical block size in practice (512 or 4096).
pub const BLOCK_SIZE: usize = 4096;

/// Rounds `v` up to a multiple of [`BLOCK_SIZE`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64
}

/// Rounds `v` down to a multiple of [`BLOCK_SIZE`].
pub fn align_down(v: u64) -> u64 {
    v - v % BLOCK_SIZE as u64
}

/// A write buffer: DMA-capable (aligned, possibly registered with io_uring)
/// or plain heap memory for buffered files and test doubles.
pub enum IoBuf {
    Dma(glommio::io::DmaBuffer),
    Heap(Vec<u8>),
}

impl IoBuf {
    pub fn len(&self) -> usize {
        match self {
            IoBuf::Dma(b) => b.len(),
            IoBuf::Heap(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes(),
            IoBuf::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes_mut(),
            IoBuf::Heap(v) => v,
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoBuf::Dma(b) => write!(f, "IoBuf::Dma({} bytes)", b.len()),
            IoBuf::Heap(v) => write!(f, "IoBuf::Heap({} bytes)", v.len()),
        }
    }
}

/// The bytes of one [`StorageFile::read_at_local`]. Not `Send`: a glommio
/// read result belongs to the shard (executor) that issued the read.
pub enum LocalBuf {
    Shared(Bytes),
    Glommio(glommio::io::ReadResult),
}

impl std::ops::Deref for LocalBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            LocalBuf::Shared(b) => b,
            LocalBuf::Glommio(r) => r,
        }
    }
}

impl std::fmt::Debug for LocalBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBuf({} bytes)", self.len())
    }
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    ReadOnly,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; created if missing, kept if present.
    CreateOrOpen,
    /// Read and write; created if missing, truncated to zero if present.
    CreateTruncate,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// One open file. Writes must start at a multiple of [`StorageFile::alignment`]
/// and have a length that is a multiple of it (O_DIRECT rules); reads may be
/// unaligned and return fewer bytes than asked at the end of the file.
pub trait StorageFile {
    /// Path the file was opened at (for error messages).
    fn path(&self) -> &Path;
    /// Required alignment of write positions and lengths, in bytes.
    fn alignment(&self) -> usize;
    /// Whether the file bypasses the page cache (O_DIRECT).
    fn is_direct(&self) -> bool;
    /// A buffer of `len` bytes suitable for `write_at`. Its initial content
    /// is unspecified (DMA buffers are not cleared): the caller fills it all.
    fn alloc_buf(&self, len: usize) -> IoBuf;
    /// Writes the whole buffer at `pos`; returns the bytes written.
    fn write_at(&self, buf: IoBuf, pos: u64) -> IoFuture<'_, usize>;
    /// Reads up to `len` bytes at `pos` (short at end of file).
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes>;
    /// Like [`StorageFile::read_at`], but the bytes stay in the buffer the
    /// read landed in (glommio's DMA buffer for O_DIRECT files) instead of
    /// being copied into `Bytes`. For data held briefly on the shard and
    /// copied once when served (read-ahead). The default copies.
    fn read_at_local(&self, pos: u64, len: usize) -> IoFuture<'_, LocalBuf> {
        Box::pin(async move { self.read_at(pos, len).await.map(LocalBuf::Shared) })
    }
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    fn truncate(&self, len: u64) -> IoFuture<'_, ()>;
    /// Preallocates disk blocks up to `pos + len` (`fallocate` mode 0): the
    /// file grows to at least `pos + len` bytes, the new space reads as
    /// zeros, existing data is untouched and the file never shrinks.
    ///
    /// Why: block allocation and file growth then happen ahead of the
    /// appends, in large steps, instead of inside every append. (It does
    /// not make ext4 appends complete inline in io_uring: measured on 6.18,
    /// they still run on an `iou-wrk` thread; see docs/ARCHITECTURE.md.)
    /// Like a write, the new size and blocks are durable only after an
    /// `fdatasync`.
    ///
    /// Returns `Ok(false)`, having changed nothing, where the filesystem
    /// cannot preallocate (EOPNOTSUPP) or where it would not help (tmpfs):
    /// callers then carry on without preallocation.
    fn allocate(&self, pos: u64, len: u64) -> IoFuture<'_, bool>;
    /// Current size of the file, in bytes.
    fn size(&self) -> IoFuture<'_, u64>;
    /// Closes the file; later operations on this handle fail with EBADF.
    fn close(&self) -> IoFuture<'_, ()>;
}

/// Filesystem operations. Directory operations run off the shard (blocking
/// pool) in the glommio implementation.
pub trait Storage {
    fn open(&self, path: &Path, mode: OpenMode) -> IoFuture<'_, FileRef>;
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()>;
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()>;
    fn remove_dir_all(&self, path: &Path) -> IoFuture<'_, ()>;
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()>;
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<DirEntry>>;
    /// fsync of a directory, making created/renamed/removed entries durable.
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()>;
}

/// Writes `data` as the whole content of `path` (created or truncated), with
/// an fdatasync, through the aligned-write rules of [`StorageFile`].
pub async fn write_whole_file(storage: &dyn Storage, path: &Path, data: &[u8]) -> io::Result<()> {
    let file = storage.open(path, OpenMode::CreateTruncate).await?;
    let result = async {
        let align = file.alignment().max(1) as u64;
        let len = (data.len() as u64).div_ceil(align) * align;
        if len > 0 {
            let mut buf = file.alloc_buf(len as usize);
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            buf.as_mut_slice()[data.len()..].fill(0);
            let written = file.write_at(buf, 0).await?;
            if written as u64 != len {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {len} bytes"),
                ));
            }
            if len != data.len() as u64 {
                file.truncate(data.len() as u64).await?;
            }
        }
        file.fdatasync().await
    }
    .await;
    let closed = file.close().await;
    result.and(closed)
}

/// Reads the whole content of `path`.
pub async fn read_whole_file(storage: &dyn Storage, path: &Path) -> io::Result<Bytes> {
    let file = storage.open(path, OpenMode::ReadOnly).await?;
    let result = async {
        let size = file.size().await?;
        file.read_at(0, size as usize).await
    }
    .await;
    let _ = file.close().await;
    result
}

/// True when the error is "no space left on device" (or quota exceeded).
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || err.kind() == io::ErrorKind::StorageFull
}
