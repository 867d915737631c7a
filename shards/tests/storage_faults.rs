//! Error paths through a fault-injecting wrapper around the real storage:
//! ENOSPC on write (fail, roll back, resume) and EIO on fdatasync (fence).

mod storage_util;

use bytes::Bytes;
use ringmq_shards::{
    cache::TailCache,
    io::{DirEntry, FileRef, IoBuf, IoFuture, OpenMode, Storage, StorageFile, StorageRef},
    log::{Acks, LogError},
};
use std::{cell::Cell, io, path::Path, rc::Rc};
use storage_util::*;

#[derive(Default)]
struct Faults {
    enospc_writes: Cell<bool>,
    eio_syncs: Cell<bool>,
}

struct FaultyStorage {
    inner: StorageRef,
    faults: Rc<Faults>,
}

struct FaultyFile {
    inner: FileRef,
    faults: Rc<Faults>,
    log_file: bool,
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> IoFuture<'_, FileRef> {
        let log_file = path.extension().is_some_and(|e| e == "log");
        let path = path.to_path_buf();
        Box::pin(async move {
            let inner = self.inner.open(&path, mode).await?;
            Ok(Rc::new(FaultyFile {
                inner,
                faults: self.faults.clone(),
                log_file,
            }) as FileRef)
        })
    }
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.create_dir_all(path)
    }
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        self.inner.rename(from, to)
    }
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<DirEntry>> {
        self.inner.list_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.sync_dir(path)
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
        if self.log_file && self.faults.enospc_writes.get() {
            return Box::pin(async { Err(io::Error::from_raw_os_error(libc::ENOSPC)) });
        }
        self.inner.write_at(buf, pos)
    }
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
        self.inner.read_at(pos, len)
    }
    fn fdatasync(&self) -> IoFuture<'_, ()> {
        if self.log_file && self.faults.eio_syncs.get() {
            return Box::pin(async { Err(io::Error::from_raw_os_error(libc::EIO)) });
        }
        self.inner.fdatasync()
    }
    fn truncate(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.truncate(len)
    }
    fn size(&self) -> IoFuture<'_, u64> {
        self.inner.size()
    }
    fn close(&self) -> IoFuture<'_, ()> {
        self.inner.close()
    }
}

fn faulty() -> (StorageRef, Rc<Faults>) {
    let faults = Rc::new(Faults::default());
    (
        Rc::new(FaultyStorage {
            inner: storage(),
            faults: faults.clone(),
        }),
        faults,
    )
}

#[test]
fn disk_full_fails_the_pending_appends_and_writes_resume() {
    run(|| async {
        let dir = tempdir();
        let (storage, faults) = faulty();
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        let ok = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        ok.durable.await.unwrap();
        faults.enospc_writes.set(true);
        let a = log.append(make_batch(2, 100, 0), Acks::Fsync).unwrap();
        let b = log.append(make_batch(1, 100, 0), Acks::Leader).unwrap();
        // The first write of an idle partition starts inside `append`; here
        // it fails at once, so `b` reuses the offsets given back by `a`.
        assert_eq!(a.base_offset, 1);
        assert!(b.base_offset == 1 || b.base_offset == 3);
        let ea = a.durable.await.unwrap_err();
        let eb = b.durable.await.unwrap_err();
        assert!(matches!(ea, LogError::DiskFull { .. }), "{ea:?}");
        assert!(matches!(eb, LogError::DiskFull { .. }));
        assert!(ea.to_string().contains("free space"), "{ea}");
        // The offsets were given back; nothing became visible.
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(log.high_watermark(), 1);
        faults.enospc_writes.set(false);
        let c = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        assert_eq!(c.base_offset, 1);
        c.durable.await.unwrap();
        assert_eq!(offsets(&read_all(&log, 0).await), vec![(0, 0), (1, 1)]);
        log.close().await.unwrap();
        let log = open(dir.path(), small_config()).await;
        assert_eq!(offsets(&read_all(&log, 0).await), vec![(0, 0), (1, 1)]);
        log.close().await.unwrap();
    });
}

#[test]
fn fdatasync_error_fences_the_partition() {
    run(|| async {
        let dir = tempdir();
        let (storage, faults) = faulty();
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        log.append(make_batch(1, 100, 0), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        faults.eio_syncs.set(true);
        let a = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        let err = a.durable.await.unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Io {
                    op: "fdatasync",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(log.fenced().is_some());
        assert_eq!(
            log.high_watermark(),
            1,
            "never visible without a good fdatasync"
        );
        let refused = log.append(make_batch(1, 100, 0), Acks::Fsync);
        assert!(matches!(refused, Err(LogError::Fenced { .. })));
        assert!(refused.err().unwrap().to_string().contains("restart"));
        // Reads of durable data still work.
        assert_eq!(
            offsets(&log.read(0, 1000).await.unwrap().chunks),
            vec![(0, 0)]
        );
        assert!(log.close().await.is_err());
    });
}
