//! One client connection: framing, pipelining, ordered submission, replies.
//!
//! The reader decodes frames and hands each request to the shard's ordered
//! phase ([`Shard::submit`]) before reading the next one, so a connection's
//! produce requests get offsets in the order they were sent. Completions
//! (durability waits, long polls, remote replies) run as separate tasks and
//! queue their replies to the writer, which sends them in whatever order they
//! finish (clients match by correlation id), many per `sendmsg`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use flatbuffers::FlatBufferBuilder;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use ringmq_shards::shard::{Reply, Shard};
use ringmq_wire::envelope::{
    peek_request_header, ApiKey, Request, Response, ResponseBody, API_VERSION,
};
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::frame::{encode_frame_head, FrameDecoder, FrameError};

use super::shutdown::Shutdown;
use super::sockio::{recv_into, send_all};

/// Bytes the reader asks the kernel for at a time (more for a large frame).
const READ_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
}

/// Replies waiting for the writer. Bounded by the in-flight semaphore.
struct Outbox {
    queue: RefCell<VecDeque<(u64, Reply)>>,
    ready: Event,
    /// Set once the reader is done and every in-flight request replied.
    closed: Cell<bool>,
}

impl Outbox {
    fn push(&self, correlation_id: u64, reply: Reply) {
        self.queue.borrow_mut().push_back((correlation_id, reply));
        self.ready.notify(1);
    }

    fn close(&self) {
        self.closed.set(true);
        self.ready.notify(1);
    }
}

pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    // The reader gets its own glommio stream over a dup of the socket, so
    // reads and writes each own a stream and never contend for `&mut`.
    let read_stream = match dup_stream(&stream) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(?peer, error = %err, "could not set up connection");
            return;
        }
    };
    let metrics = shard.metrics().clone();
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let outbox = Rc::new(Outbox {
        queue: RefCell::new(VecDeque::new()),
        ready: Event::new(),
        closed: Cell::new(false),
    });
    let writer = glommio::spawn_local(write_loop(stream, outbox.clone()));
    let in_flight = Rc::new(glommio::sync::Semaphore::new(limits.max_in_flight as u64));
    if let Err(err) = read_loop(&shard, read_stream, limits, &outbox, &in_flight, &shutdown).await {
        tracing::debug!(?peer, error = %err, "connection closed");
    }
    // Wait for every in-flight request to queue its reply, then let the
    // writer drain and finish.
    let _ = in_flight.acquire(limits.max_in_flight as u64).await;
    outbox.close();
    writer.await;
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
}

pub(crate) fn dup_stream(stream: &TcpStream) -> std::io::Result<TcpStream> {
    // SAFETY: dup returns a new descriptor we own (or -1).
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, owned descriptor of a connected TCP socket.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unframeable input: {0}")]
    Frame(#[from] FrameError),
    #[error("broker shutting down")]
    Shutdown,
}

async fn read_loop(
    shard: &Rc<Shard>,
    stream: TcpStream,
    limits: ConnectionLimits,
    outbox: &Rc<Outbox>,
    in_flight: &Rc<glommio::sync::Semaphore>,
    shutdown: &Shutdown,
) -> Result<(), ReadError> {
    let decoder = FrameDecoder::new(limits.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    in_flight.acquire(1).await.expect("semaphore never closes");
                    let payload = own_small_payload(frame.payload);
                    dispatch(shard, frame.envelope, payload, outbox, in_flight).await;
                }
                Ok(None) => break,
                Err(err) => {
                    // The stream can no longer be framed: say why, then close.
                    let code = match err {
                        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::MalformedFrame,
                    };
                    in_flight.acquire(1).await.expect("semaphore never closes");
                    outbox.push(
                        0,
                        Reply::error(
                            ApiKey::ApiVersions,
                            ApiError::new(code, format!("{err}; closing the connection")),
                        ),
                    );
                    in_flight.signal(1);
                    return Err(err.into());
                }
            }
        }
        let wanted = decoder
            .frame_size_hint(&buf)
            .map(|size| size.saturating_sub(buf.len()))
            .unwrap_or(0)
            .max(READ_CHUNK_BYTES.min(limits.max_frame_bytes));
        buf.reserve(wanted);
        let read = shutdown.or_cancel(recv_into(&stream, &mut buf)).await;
        match read {
            None => return Err(ReadError::Shutdown),
            Some(Ok(0)) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// Payloads below this size get their own allocation.
const SMALL_PAYLOAD_COPY_BYTES: usize = 64 * 1024;

/// A payload is a view of the read buffer, and batches stay referenced by the
/// tail cache after the request is done: a 100-byte batch would pin its whole
/// 256 KiB read buffer. Small payloads are copied into an exact-size buffer
/// (cheap at this size); large ones fill most of their buffer anyway.
fn own_small_payload(payload: BytesMut) -> BytesMut {
    if payload.is_empty() || payload.len() >= SMALL_PAYLOAD_COPY_BYTES {
        return payload;
    }
    BytesMut::from(&payload[..])
}

/// Runs the ordered phase of one request and spawns its completion.
async fn dispatch(
    shard: &Rc<Shard>,
    envelope: BytesMut,
    payload: BytesMut,
    outbox: &Rc<Outbox>,
    in_flight: &Rc<glommio::sync::Semaphore>,
) {
    let request = match Request::decode(&envelope) {
        Ok(request) => request,
        Err(err) => {
            // The frame was well delimited, so the stream goes on; answer by
            // correlation id when the header itself could be read.
            let header = peek_request_header(&envelope);
            let correlation_id = header.map(|h| h.0).unwrap_or(0);
            let api = header
                .and_then(|(_, api)| ApiKey::from_fb(ringmq_wire::generated::ApiKey(api)))
                .unwrap_or(ApiKey::ApiVersions);
            shard
                .metrics()
                .request_errors
                .fetch_add(1, Ordering::Relaxed);
            outbox.push(correlation_id, Reply::error(api, err.to_api_error()));
            in_flight.signal(1);
            return;
        }
    };
    let correlation_id = request.correlation_id;
    let api = request.body.api();
    let started = std::time::Instant::now();
    let completion = shard.submit(request, payload).await;
    let outbox = outbox.clone();
    let in_flight = in_flight.clone();
    glommio::spawn_local(async move {
        let reply = completion.await;
        ringmq_shards::metrics::record_request_latency(api, started.elapsed().as_micros() as u64);
        if !reply.silent {
            outbox.push(correlation_id, reply);
        }
        in_flight.signal(1);
    })
    .detach();
}

async fn write_loop(mut stream: TcpStream, outbox: Rc<Outbox>) {
    let mut fbb = FlatBufferBuilder::with_capacity(4096);
    let mut heads = BytesMut::with_capacity(64 * 1024);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let listener = outbox.ready.listen();
        let batch: Vec<(u64, Reply)> = outbox.queue.borrow_mut().drain(..).collect();
        if batch.is_empty() {
            if outbox.closed.get() {
                break;
            }
            listener.await;
            continue;
        }
        encode_replies(&mut fbb, &mut heads, &mut chunks, batch);
        if let Err(err) = send_all(&mut stream, &chunks).await {
            tracing::debug!(error = %err, "write failed; dropping connection");
            // Keep draining so in-flight tasks can finish; nothing more is sent.
            chunks.clear();
            drain_until_closed(&outbox).await;
            break;
        }
        chunks.clear();
    }
    let _ = stream.close().await;
}

async fn drain_until_closed(outbox: &Outbox) {
    loop {
        let listener = outbox.ready.listen();
        outbox.queue.borrow_mut().clear();
        if outbox.closed.get() {
            return;
        }
        listener.await;
    }
}

/// Lays out each reply as [frame head + envelope][payload chunks...]. Heads
/// are small and copied into one buffer; payload `Bytes` go out as they are.
fn encode_replies(
    fbb: &mut FlatBufferBuilder<'static>,
    heads: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
    batch: Vec<(u64, Reply)>,
) {
    for (correlation_id, reply) in batch {
        let payload_bytes: usize = reply.payload.iter().map(Bytes::len).sum();
        let (error, body) = match reply.body {
            Ok(body) => (None, body),
            Err(err) => (Some(err), ResponseBody::None),
        };
        let response = Response {
            api: reply.api,
            version: API_VERSION,
            correlation_id,
            error,
            body,
        };
        let envelope = response.encode(fbb);
        encode_frame_head(heads, envelope, payload_bytes);
        chunks.push(heads.split().freeze());
        chunks.extend(reply.payload);
    }
}
