//! One Kafka client connection: size-prefixed frames in, responses out in
//! request order.
//!
//! Kafka clients pipeline requests but expect responses in the order they
//! sent them. The reader runs each request's ordered phase (offset
//! assignment for produce, see `Shard::submit`) before reading the next
//! frame, spawns the rest as a task, and queues the task; the writer awaits
//! the queued tasks strictly in order. The queue is bounded
//! (`max_in_flight`), so a client that never reads its responses stops being
//! read from.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;

use super::handlers;
use super::KafkaContext;
use crate::server::connection::dup_stream;
use crate::server::shutdown::Shutdown;
use crate::server::sockio::{recv_into, send_all};

/// Bytes the reader asks the kernel for at a time (more for a large frame).
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Frames below this size are copied out of the read buffer (see
/// `take_frame`).
const SMALL_FRAME_COPY_BYTES: usize = 64 * 1024;

type Pending = JoinHandle<Option<Bytes>>;

pub async fn serve(ctx: Rc<KafkaContext>, stream: TcpStream, shutdown: Shutdown) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let read_stream = match dup_stream(&stream) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(?peer, error = %err, "could not set up kafka connection");
            return;
        }
    };
    let metrics = ctx.shard.metrics().clone();
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (sender, receiver) = local_channel::new_bounded::<Pending>(ctx.max_in_flight);
    let writer = glommio::spawn_local(write_loop(stream, receiver));
    if let Err(err) = read_loop(&ctx, read_stream, &sender, &shutdown).await {
        tracing::debug!(?peer, error = %err, "kafka connection closed");
    }
    drop(sender);
    writer.await;
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size_bytes} bytes is negative or above the {max_bytes}-byte limit (--max-frame-bytes); closing, as Kafka does")]
    FrameSize { size_bytes: i64, max_bytes: usize },
    #[error("{0}")]
    Fatal(String),
    #[error("broker shutting down")]
    Shutdown,
}

async fn read_loop(
    ctx: &Rc<KafkaContext>,
    stream: TcpStream,
    pending: &LocalSender<Pending>,
    shutdown: &Shutdown,
) -> Result<(), ReadError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        while let Some(frame) = take_frame(&mut buf, ctx.max_frame_bytes)? {
            let completion = handlers::handle(ctx, frame)
                .await
                .map_err(ReadError::Fatal)?;
            let task = glommio::spawn_local(completion).detach();
            if pending.send(task).await.is_err() {
                return Ok(()); // the writer is gone: the socket failed
            }
        }
        let wanted = frame_size(&buf)
            .map(|size| (size + 4).saturating_sub(buf.len()))
            .unwrap_or(0)
            .max(READ_CHUNK_BYTES);
        buf.reserve(wanted);
        match shutdown.or_cancel(recv_into(&stream, &mut buf)).await {
            None => return Err(ReadError::Shutdown),
            Some(Ok(0)) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

fn frame_size(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]).max(0) as usize)
}

/// The next whole frame (without its size prefix), owning its memory alone.
///
/// A frame is a view of the read buffer, and produce batches outlive the
/// request in the tail cache; the produce path also needs the frame's bytes
/// uniquely owned to hand them to the shard as `BytesMut` after decoding
/// (see `handlers::produce`). So a small frame is copied into its own
/// buffer, and for a large one the *rest* of the read buffer (at most one
/// read's worth) is moved to a fresh buffer instead.
fn take_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<BytesMut>, ReadError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 || size as usize > max_frame_bytes {
        return Err(ReadError::FrameSize {
            size_bytes: i64::from(size),
            max_bytes: max_frame_bytes,
        });
    }
    let size = size as usize;
    if buf.len() < 4 + size {
        return Ok(None);
    }
    if size < SMALL_FRAME_COPY_BYTES {
        let frame = BytesMut::from(&buf[4..4 + size]);
        buf.advance(4 + size);
        return Ok(Some(frame));
    }
    let rest = BytesMut::from(&buf[4 + size..]);
    let mut frame = std::mem::replace(buf, rest);
    frame.truncate(4 + size);
    frame.advance(4);
    Ok(Some(frame))
}

async fn write_loop(mut stream: TcpStream, pending: LocalReceiver<Pending>) {
    let mut failed = false;
    while let Some(task) = pending.recv().await {
        // Await every task even after a write failure: a produce's
        // durability wait runs to the end either way.
        let Some(Some(response)) = task.await else {
            continue;
        };
        if failed {
            continue;
        }
        if let Err(err) = send_all(&mut stream, &[response]).await {
            tracing::debug!(error = %err, "kafka write failed; dropping connection");
            failed = true;
        }
    }
    let _ = stream.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_are_cut_whole_and_in_order() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&framed(b"abc"));
        buf.extend_from_slice(&framed(b"de"));
        buf.extend_from_slice(&[0, 0, 0]);
        assert_eq!(&take_frame(&mut buf, 100).unwrap().unwrap()[..], b"abc");
        assert_eq!(&take_frame(&mut buf, 100).unwrap().unwrap()[..], b"de");
        assert!(take_frame(&mut buf, 100).unwrap().is_none());
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn a_large_frame_owns_its_buffer() {
        let body = vec![7u8; SMALL_FRAME_COPY_BYTES + 10];
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&framed(&body));
        buf.extend_from_slice(&framed(b"next"));
        let frame = take_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.len(), body.len());
        let frozen = frame.freeze();
        assert!(frozen.try_into_mut().is_ok(), "no other view shares it");
        assert_eq!(
            &take_frame(&mut buf, 1 << 20).unwrap().unwrap()[..],
            b"next"
        );
    }

    #[test]
    fn oversize_and_negative_frames_are_refused() {
        let mut buf = BytesMut::from(&framed(&[0; 20])[..]);
        assert!(take_frame(&mut buf, 10).is_err());
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert!(take_frame(&mut buf, 10).is_err());
    }
}
