//! Socket I/O the hot path needs and glommio 0.9 lacks.
//!
//! glommio's `TcpStream` has no vectored write and reads only into
//! initialised slices. Its own fast path is a non-blocking syscall first and
//! an io_uring readiness poll only when that would block; we do the same
//! with `recv(2)` straight into a `BytesMut`'s spare capacity and
//! `sendmsg(2)` over many `Bytes` at once, and fall back to glommio's own
//! (readiness-waiting) operations only on `EAGAIN`. Workaround kept small on
//! purpose: if glommio grows vectored writes, `send_all` becomes a loop
//! over them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

/// Upper bound of iovecs per `sendmsg` (Linux IOV_MAX is 1024); 256
/// iovecs are 4 KiB of stack.
const MAX_IOVECS: usize = 256;

fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// Non-blocking `recv` into the spare capacity of `buf`.
fn try_recv(fd: RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    assert!(buf.capacity() > buf.len(), "caller reserves before reading");
    let spare = buf.chunk_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into memory we
    // own; `advance_mut` then covers exactly what it wrote.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr() as *mut libc::c_void,
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { buf.advance_mut(n as usize) };
    Ok(n as usize)
}

/// Reads what is available into `buf` (waiting if nothing is). Returns 0 at
/// end of stream.
pub async fn recv_into(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    loop {
        match try_recv(fd, buf) {
            Ok(n) => return Ok(n),
            Err(e) if would_block(&e) => {
                // Park on io_uring until readable; peek consumes nothing.
                let mut probe = [0u8; 1];
                if stream.peek(&mut probe).await? == 0 {
                    return Ok(0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Non-blocking `sendmsg` of the unsent bytes of `chunks` (from byte `skip`
/// of `chunks[index]` on), as many chunks as one call takes; returns bytes
/// sent. The iovecs live on the stack: no allocation per call.
fn try_sendmsg(fd: RawFd, chunks: &[Bytes], index: usize, skip: usize) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovecs = [empty; MAX_IOVECS];
    let first = std::iter::once(&chunks[index][skip..]);
    let rest = chunks[index + 1..].iter().map(|c| &c[..]);
    let mut count = 0usize;
    for (slot, chunk) in iovecs.iter_mut().zip(first.chain(rest)) {
        *slot = libc::iovec {
            iov_base: chunk.as_ptr() as *mut libc::c_void,
            iov_len: chunk.len(),
        };
        count += 1;
    }
    // SAFETY: msghdr is plain data; we fill the iovec fields only.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_mut_ptr();
    msg.msg_iovlen = count as _;
    // SAFETY: the iovecs point into `chunks`, alive for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes every byte of `chunks`, in order, with as few syscalls as the
/// socket buffer allows.
pub async fn send_all(stream: &mut TcpStream, chunks: &[Bytes]) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let mut index = 0usize; // first chunk not fully sent
    let mut skip = 0usize; // bytes of chunks[index] already sent
    while index < chunks.len() {
        let sent = match try_sendmsg(fd, chunks, index, skip) {
            Ok(n) => n,
            Err(e) if would_block(&e) => {
                // Socket buffer full: let glommio wait for writability (it
                // sends at least one byte of the current chunk when ready).
                stream.write(&chunks[index][skip..]).await?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        advance(chunks, &mut index, &mut skip, sent);
    }
    Ok(())
}

fn advance(chunks: &[Bytes], index: &mut usize, skip: &mut usize, mut sent: usize) {
    while sent > 0 {
        let left = chunks[*index].len() - *skip;
        if sent < left {
            *skip += sent;
            return;
        }
        sent -= left;
        *index += 1;
        *skip = 0;
    }
    // Skip empty chunks so the loop condition sees real progress.
    while *index < chunks.len() && chunks[*index].len() == *skip {
        *index += 1;
        *skip = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_walks_chunks() {
        let chunks = vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"de"),
        ];
        let (mut i, mut s) = (0, 0);
        advance(&chunks, &mut i, &mut s, 2);
        assert_eq!((i, s), (0, 2));
        advance(&chunks, &mut i, &mut s, 1);
        assert_eq!((i, s), (2, 0));
        advance(&chunks, &mut i, &mut s, 2);
        assert_eq!((i, s), (3, 0));
    }
}
