//! One pipelined connection to one broker endpoint, runtime-agnostic.
//!
//! * A writer thread takes frames from a bounded channel and writes them with
//!   `write_vectored`, coalescing whatever else is queued (up to
//!   [`MAX_COALESCE_FRAMES`] / [`MAX_COALESCE_BYTES`]) into one syscall.
//! * A reader thread decodes frames out of one `BytesMut`, matches responses
//!   to pending requests by correlation id (they may come back in any order)
//!   and hands each caller `(Response, payload)`, the payload a zero-copy
//!   `Bytes` view of the read buffer.
//! * In-flight requests are bounded (`max_in_flight`): callers block for a
//!   slot, at most `request_timeout_ms`.
//! * A request that stays unanswered past its deadline fails with `Timeout`
//!   and the connection is closed (as Kafka clients do): a late answer could
//!   otherwise be confused with the state of later requests, and a stuck
//!   connection is better replaced. Every other pending request then fails
//!   with `Disconnected`. A broken connection is never reused; the pool
//!   ([`crate::cluster`]) opens a fresh one on next use.

use std::collections::HashMap;
use std::future::Future;
use std::io::{IoSlice, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel as channel;
use flatbuffers::FlatBufferBuilder;
use ringmq_wire::envelope::{ApiKey, Request, RequestBody, Response};
use ringmq_wire::frame::{encode_frame_head, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};

use crate::error::{ClientError, Result};
use crate::oneshot;

/// At most this many frames go into one vectored write.
pub const MAX_COALESCE_FRAMES: usize = 64;
/// Stop coalescing once this many bytes are gathered.
pub const MAX_COALESCE_BYTES: usize = 4 * 1024 * 1024;
/// `IOV_MAX` is 1024 on Linux; stay well below it.
const MAX_IO_SLICES: usize = 512;
/// Smallest read the reader asks the kernel for.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub client_id: String,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Requests awaiting a response, per connection.
    pub max_in_flight: usize,
    /// Frames queued for the writer thread before senders block.
    pub write_queue_frames: usize,
    pub max_frame_bytes: usize,
    /// `SO_SNDBUF` / `SO_RCVBUF`; `None` keeps the kernel's autotuning.
    pub socket_send_buffer_bytes: Option<usize>,
    pub socket_recv_buffer_bytes: Option<usize>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_id: "ringmq-client".to_string(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_in_flight: 16,
            write_queue_frames: 256,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            socket_send_buffer_bytes: None,
            socket_recv_buffer_bytes: None,
        }
    }
}

/// A response and the frame's raw payload (record batches, for fetch).
pub type Reply = (Response, Bytes);
pub type ReplyResult = Result<Reply>;
type Callback = Box<dyn FnOnce(ReplyResult) + Send + 'static>;
type WriteCallback = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// How a pending request is completed: a oneshot for [`ResponseFuture`], or
/// a callback run on the reader thread. Dropping it uncompleted reports
/// `Disconnected`, so no path can leave a caller waiting forever.
struct Completion {
    inner: Option<CompletionKind>,
    endpoint: Arc<str>,
}

enum CompletionKind {
    Oneshot(oneshot::Sender<ReplyResult>),
    Callback(Callback),
}

impl Completion {
    fn complete(mut self, result: ReplyResult) {
        run_completion(self.inner.take().expect("completed once"), result);
    }
}

fn run_completion(kind: CompletionKind, result: ReplyResult) {
    match kind {
        CompletionKind::Oneshot(tx) => tx.send(result),
        CompletionKind::Callback(cb) => cb(result),
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(kind) = self.inner.take() {
            run_completion(
                kind,
                Err(disconnected(
                    &self.endpoint,
                    "the connection's I/O thread stopped",
                )),
            );
        }
    }
}

/// Notified once a frame that expects no response has been written (or failed).
struct WriteNotify {
    callback: Option<WriteCallback>,
    endpoint: Arc<str>,
}

impl WriteNotify {
    fn notify(mut self, result: Result<()>) {
        if let Some(cb) = self.callback.take() {
            cb(result);
        }
    }
}

impl Drop for WriteNotify {
    fn drop(&mut self) {
        if let Some(cb) = self.callback.take() {
            cb(Err(disconnected(
                &self.endpoint,
                "the frame was never written",
            )));
        }
    }
}

fn disconnected(endpoint: &str, reason: &str) -> ClientError {
    ClientError::Disconnected {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    }
}

/// What the writer thread sends: the frame head (prefix + envelope) and the
/// payload chunks, written back to back.
struct Outgoing {
    head: Bytes,
    payload: Vec<Bytes>,
    written: Option<WriteNotify>,
}

impl Outgoing {
    fn len_bytes(&self) -> usize {
        self.head.len() + self.payload.iter().map(Bytes::len).sum::<usize>()
    }
}

struct Pending {
    api: ApiKey,
    deadline: Instant,
    timeout_ms: u64,
    completion: Completion,
}

struct State {
    pending: HashMap<u64, Pending>,
    /// Why the connection is unusable; set once, never cleared.
    broken: Option<String>,
}

struct Shared {
    endpoint: Arc<str>,
    config: ConnectionConfig,
    state: Mutex<State>,
    /// Signalled when a pending request completes (a slot frees up) or the
    /// connection breaks.
    slot_freed: Condvar,
    broken: AtomicBool,
    socket: TcpStream,
    next_correlation_id: AtomicU64,
}

/// A handle to one connection. Cheap to clone; the I/O threads stop when the
/// last handle is dropped (pending requests then fail with `Disconnected`).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    tx: channel::Sender<Outgoing>,
}

/// The answer to one request: `.wait()` blocks, `.await` works in any
/// executor.
pub struct ResponseFuture {
    rx: oneshot::Receiver<ReplyResult>,
    endpoint: Arc<str>,
}

impl ResponseFuture {
    pub fn wait(self) -> ReplyResult {
        let endpoint = self.endpoint;
        self.rx
            .wait()
            .unwrap_or_else(|_| Err(disconnected(&endpoint, "the response was dropped")))
    }

    /// `Ok(None)` when nothing arrived within `timeout`; the future stays usable.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Reply>> {
        match self.rx.wait_timeout(timeout) {
            Ok(None) => Ok(None),
            Ok(Some(result)) => result.map(Some),
            Err(_) => Err(disconnected(&self.endpoint, "the response was dropped")),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.rx.is_ready()
    }
}

impl Future for ResponseFuture {
    type Output = ReplyResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReplyResult> {
        let endpoint = self.endpoint.clone();
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(disconnected(&endpoint, "the response was dropped"))))
    }
}

thread_local! {
    static FBB: std::cell::RefCell<FlatBufferBuilder<'static>> =
        std::cell::RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

/// Encodes prefix + envelope for `payload_bytes` of payload that follows.
pub(crate) fn encode_head(request: &Request, payload_bytes: usize) -> Bytes {
    FBB.with(|fbb| {
        let mut fbb = fbb.borrow_mut();
        let envelope = request.encode(&mut fbb);
        let mut head = BytesMut::with_capacity(8 + envelope.len());
        encode_frame_head(&mut head, envelope, payload_bytes);
        head.freeze()
    })
}

impl Connection {
    /// Connects to `endpoint` (`host:port`) and starts the I/O threads.
    pub fn connect(endpoint: &str, config: ConnectionConfig) -> Result<Connection> {
        assert!(config.max_in_flight > 0, "max_in_flight must be at least 1");
        assert!(
            config.write_queue_frames > 0,
            "write_queue_frames must be at least 1"
        );
        let socket = open_socket(endpoint, &config)?;
        let endpoint: Arc<str> = Arc::from(endpoint);
        let tick = reader_tick(config.request_timeout_ms);
        socket
            .set_read_timeout(Some(tick))
            .map_err(|e| ClientError::io(&endpoint, &e))?;
        let reader_socket = socket
            .try_clone()
            .map_err(|e| ClientError::io(&endpoint, &e))?;
        let writer_socket = socket
            .try_clone()
            .map_err(|e| ClientError::io(&endpoint, &e))?;
        let (tx, rx) = channel::bounded(config.write_queue_frames);
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            config,
            state: Mutex::new(State {
                pending: HashMap::new(),
                broken: None,
            }),
            slot_freed: Condvar::new(),
            broken: AtomicBool::new(false),
            socket,
            next_correlation_id: AtomicU64::new(1),
        });
        let spawn_err = |e: std::io::Error| ClientError::io(&endpoint, &e);
        let reader_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("ringmq-rd-{endpoint}"))
            .spawn(move || reader_loop(reader_shared, reader_socket))
            .map_err(spawn_err)?;
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("ringmq-wr-{endpoint}"))
            .spawn(move || writer_loop(writer_shared, writer_socket, rx))
            .map_err(spawn_err)?;
        Ok(Connection { shared, tx })
    }

    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    pub fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
    }

    /// Requests awaiting a response right now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Closes the connection; pending requests fail with `Disconnected`.
    pub fn close(&self) {
        self.shared.fail("closed by the client");
    }

    /// Sends a request and returns a future for its response. Blocks while
    /// `max_in_flight` requests are pending (at most the request timeout).
    pub fn request(&self, body: RequestBody, payload: Vec<Bytes>) -> Result<ResponseFuture> {
        let (tx, rx) = oneshot::channel();
        let completion = self.completion(CompletionKind::Oneshot(tx));
        self.submit(body, payload, completion)?;
        Ok(ResponseFuture {
            rx,
            endpoint: self.shared.endpoint.clone(),
        })
    }

    /// Sends a request and blocks for its response.
    pub fn call(&self, body: RequestBody, payload: Vec<Bytes>) -> ReplyResult {
        self.request(body, payload)?.wait()
    }

    /// Sends a request; `callback` runs exactly once with the outcome, on the
    /// reader thread (or on this thread if the request cannot be sent). Keep
    /// it short: it delays every other response on this connection.
    pub fn request_with_callback(
        &self,
        body: RequestBody,
        payload: Vec<Bytes>,
        callback: impl FnOnce(ReplyResult) + Send + 'static,
    ) {
        let completion = self.completion(CompletionKind::Callback(Box::new(callback)));
        // On error `submit` has already completed the callback with it.
        let _ = self.submit(body, payload, completion);
    }

    /// Sends a request that the broker answers with nothing (produce with
    /// `Acks::None`). `on_written` runs once the frame is written to the
    /// socket, or with the error that prevented it.
    pub fn send_without_response(
        &self,
        body: RequestBody,
        payload: Vec<Bytes>,
        on_written: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let written = WriteNotify {
            callback: Some(Box::new(on_written)),
            endpoint: self.shared.endpoint.clone(),
        };
        if let Some(reason) = self.shared.lock().broken.clone() {
            return written.notify(Err(disconnected(&self.shared.endpoint, &reason)));
        }
        let request = self.shared.new_request(body);
        let head = encode_head(&request, payload.iter().map(Bytes::len).sum());
        let outgoing = Outgoing {
            head,
            payload,
            written: Some(written),
        };
        // A send error drops `outgoing`, whose `WriteNotify` reports it.
        let _ = self.tx.send(outgoing);
    }

    fn completion(&self, kind: CompletionKind) -> Completion {
        Completion {
            inner: Some(kind),
            endpoint: self.shared.endpoint.clone(),
        }
    }

    /// Registers the request as pending, then queues it for the writer. Any
    /// failure is reported through `completion` as well as returned.
    fn submit(&self, body: RequestBody, payload: Vec<Bytes>, completion: Completion) -> Result<()> {
        let api = body.api();
        let timeout_ms = self.shared.config.request_timeout_ms + extra_wait_ms(&body);
        let request = self.shared.new_request(body);
        let correlation_id = request.correlation_id;
        let head = encode_head(&request, payload.iter().map(Bytes::len).sum());
        let pending = Pending {
            api,
            deadline: Instant::now() + Duration::from_millis(timeout_ms),
            timeout_ms,
            completion,
        };
        // Registered before it is written, so the response can never race
        // ahead of its pending entry.
        self.shared.register(correlation_id, pending)?;
        let outgoing = Outgoing {
            head,
            payload,
            written: None,
        };
        if self.tx.send(outgoing).is_err() {
            let err = disconnected(&self.shared.endpoint, "the writer thread stopped");
            if let Some(pending) = self.shared.take_pending(correlation_id) {
                pending.completion.complete(Err(err.clone()));
            }
            return Err(err);
        }
        Ok(())
    }
}

/// How long past the rebalance timeout the broker may hold a JoinGroup
/// (it answers with `RequestTimedOut` by then at the latest).
pub const JOIN_GRACE_MS: u64 = 5_000;

/// Long polls may legitimately stay unanswered for a while: a fetch for
/// `max_wait_ms`, a JoinGroup until the rebalance completes (at most its
/// rebalance timeout plus the broker's grace).
fn extra_wait_ms(body: &RequestBody) -> u64 {
    match body {
        RequestBody::Fetch(f) => f.max_wait_ms as u64,
        RequestBody::JoinGroup(j) => u64::from(j.rebalance_timeout_ms) + JOIN_GRACE_MS,
        _ => 0,
    }
}

/// How often the reader wakes to expire timed-out requests.
fn reader_tick(request_timeout_ms: u64) -> Duration {
    Duration::from_millis((request_timeout_ms / 4).clamp(5, 200))
}

fn open_socket(endpoint: &str, config: &ConnectionConfig) -> Result<TcpStream> {
    let addrs = endpoint.to_socket_addrs().map_err(|e| ClientError::Io {
        endpoint: endpoint.to_string(),
        message: format!("cannot resolve address: {e} (expected HOST:PORT)"),
    })?;
    let timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
    let mut last_err = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                configure_socket(&stream, config).map_err(|e| ClientError::io(endpoint, &e))?;
                return Ok(stream);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(match last_err {
        Some(e) => ClientError::io(endpoint, &e),
        None => ClientError::Io {
            endpoint: endpoint.to_string(),
            message: "the address resolved to nothing".to_string(),
        },
    })
}

fn configure_socket(stream: &TcpStream, config: &ConnectionConfig) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    if let Some(bytes) = config.socket_send_buffer_bytes {
        sock.set_send_buffer_size(bytes)?;
    }
    if let Some(bytes) = config.socket_recv_buffer_bytes {
        sock.set_recv_buffer_size(bytes)?;
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_request(&self, body: RequestBody) -> Request {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(correlation_id, body);
        request.client_id.clone_from(&self.config.client_id);
        request
    }

    /// Waits for an in-flight slot, then records the pending request. On
    /// failure the request is completed with the error, which is returned.
    fn register(&self, correlation_id: u64, pending: Pending) -> Result<()> {
        let wait_deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut state = self.lock();
        loop {
            if let Some(reason) = &state.broken {
                let err = disconnected(&self.endpoint, reason);
                drop(state);
                pending.completion.complete(Err(err.clone()));
                return Err(err);
            }
            if state.pending.len() < self.config.max_in_flight {
                break;
            }
            let now = Instant::now();
            if now >= wait_deadline {
                let err = ClientError::Timeout {
                    what: format!(
                        "{} (waiting for one of {} in-flight slots)",
                        pending.api.name(),
                        self.config.max_in_flight
                    ),
                    endpoint: self.endpoint.to_string(),
                    timeout_ms: self.config.request_timeout_ms,
                };
                drop(state);
                pending.completion.complete(Err(err.clone()));
                return Err(err);
            }
            state = self
                .slot_freed
                .wait_timeout(state, wait_deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let previous = state.pending.insert(correlation_id, pending);
        assert!(previous.is_none(), "correlation id {correlation_id} reused");
        Ok(())
    }

    fn take_pending(&self, correlation_id: u64) -> Option<Pending> {
        let taken = self.lock().pending.remove(&correlation_id);
        if taken.is_some() {
            self.slot_freed.notify_one();
        }
        taken
    }

    /// Marks the connection broken, closes the socket (waking both threads)
    /// and fails every pending request. Idempotent.
    fn fail(&self, reason: &str) {
        self.fail_with(reason, |_| None);
    }

    /// Like [`Shared::fail`], letting `special` pick the error for some
    /// pending requests (the ones that timed out).
    fn fail_with(&self, reason: &str, special: impl Fn(&Pending) -> Option<ClientError>) {
        let drained: Vec<Pending> = {
            let mut state = self.lock();
            if state.broken.is_none() {
                state.broken = Some(reason.to_string());
                self.broken.store(true, Ordering::Release);
            }
            state.pending.drain().map(|(_, p)| p).collect()
        };
        self.slot_freed.notify_all();
        let _ = self.socket.shutdown(Shutdown::Both);
        if !drained.is_empty() {
            tracing::debug!(endpoint = %self.endpoint, reason, failed = drained.len(), "connection failed");
        }
        for pending in drained {
            let err = special(&pending).unwrap_or_else(|| disconnected(&self.endpoint, reason));
            pending.completion.complete(Err(err));
        }
    }

    /// Fails the connection if any pending request is past its deadline.
    fn expire(&self, now: Instant) {
        let expired = self.lock().pending.values().any(|p| p.deadline <= now);
        if !expired {
            return;
        }
        let endpoint = self.endpoint.to_string();
        self.fail_with("a request timed out, so the connection was reset", |p| {
            (p.deadline <= now).then(|| ClientError::Timeout {
                what: p.api.name().to_string(),
                endpoint: endpoint.clone(),
                timeout_ms: p.timeout_ms,
            })
        });
    }

    /// Completes the pending request a response answers.
    fn dispatch(&self, response: Response, payload: Bytes) {
        let Some(pending) = self.take_pending(response.correlation_id) else {
            // Unreachable while timeouts close the connection; harmless anyway.
            tracing::debug!(endpoint = %self.endpoint, correlation_id = response.correlation_id, "response to no pending request");
            return;
        };
        let result = if response.api != pending.api {
            Err(ClientError::Protocol {
                endpoint: self.endpoint.to_string(),
                message: format!(
                    "response {} is for api {} but request {} was {}",
                    response.correlation_id,
                    response.api.name(),
                    response.correlation_id,
                    pending.api.name()
                ),
            })
        } else if let Some(error) = response.error.clone() {
            Err(ClientError::api(error, pending.api.name()))
        } else {
            Ok((response, payload))
        };
        pending.completion.complete(result);
    }
}

fn writer_loop(shared: Arc<Shared>, mut socket: TcpStream, rx: channel::Receiver<Outgoing>) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_COALESCE_FRAMES);
    while let Ok(first) = rx.recv() {
        let mut batch_bytes = first.len_bytes();
        batch.push(first);
        while batch.len() < MAX_COALESCE_FRAMES && batch_bytes < MAX_COALESCE_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    batch_bytes += next.len_bytes();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let result = if shared.broken.load(Ordering::Acquire) {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection already failed",
            ))
        } else {
            write_frames(&mut socket, &batch)
        };
        match result {
            Ok(()) => {
                for outgoing in batch.drain(..) {
                    if let Some(written) = outgoing.written {
                        written.notify(Ok(()));
                    }
                }
            }
            Err(e) => {
                shared.fail(&format!("write failed: {e}"));
                // Dropping the batch (and the receiver, on return) reports
                // the failure to every frame still queued.
                return;
            }
        }
    }
    // Every handle is gone: nobody can wait on this connection any more.
    shared.fail("closed by the client");
}

/// Writes all frames with as few `writev` calls as possible.
fn write_frames(socket: &mut TcpStream, frames: &[Outgoing]) -> std::io::Result<()> {
    let chunks: Vec<&[u8]> = frames
        .iter()
        .flat_map(|f| std::iter::once(&f.head[..]).chain(f.payload.iter().map(|p| &p[..])))
        .filter(|c| !c.is_empty())
        .collect();
    let mut index = 0; // first chunk not fully written
    let mut offset = 0; // bytes of chunks[index] already written
    while index < chunks.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&chunks[index][offset..])
            .chain(chunks[index + 1..].iter().copied())
            .take(MAX_IO_SLICES)
            .map(IoSlice::new)
            .collect();
        let mut written = match socket.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

fn reader_loop(shared: Arc<Shared>, socket: TcpStream) {
    let decoder = FrameDecoder::new(shared.config.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let tick = reader_tick(shared.config.request_timeout_ms);
    let mut next_expiry_check = Instant::now() + tick;
    loop {
        if let Err(reason) = drain_frames(&shared, &decoder, &mut buf) {
            return shared.fail(&reason);
        }
        if shared.broken.load(Ordering::Acquire) {
            return;
        }
        // Reserve the whole frame at once when its length is known.
        let missing = decoder
            .frame_size_hint(&buf)
            .map_or(0, |n| n.saturating_sub(buf.len()));
        let want = missing.max(READ_CHUNK_BYTES);
        buf.reserve(want);
        let read = recv_into_spare(&socket, &mut buf);
        match read {
            Ok(0) => return shared.fail("the broker closed the connection"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return shared.fail(&format!("read failed: {e}")),
        }
        let now = Instant::now();
        if now >= next_expiry_check {
            shared.expire(now);
            next_expiry_check = now + tick;
        }
    }
}

/// One `recv` straight into the spare capacity of `buf` (which the caller
/// reserved), extending it by what arrived. No zeroing first: filling the
/// buffer with zeros only for the kernel to overwrite them cost as much as
/// a third of the copy itself on large fetch answers.
fn recv_into_spare(socket: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    assert!(
        buf.capacity() > buf.len(),
        "the caller reserves before reading"
    );
    let filled = buf.len();
    let n = socket2::SockRef::from(socket).recv(buf.spare_capacity_mut())?;
    assert!(filled + n <= buf.capacity(), "recv wrote past the buffer");
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(filled + n) };
    Ok(n)
}

/// Decodes and dispatches every complete frame in `buf`.
fn drain_frames(
    shared: &Shared,
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
) -> std::result::Result<(), String> {
    while let Some(frame) = decoder
        .decode(buf)
        .map_err(|e| format!("unframeable data from the broker: {e}"))?
    {
        let response = Response::decode(&frame.envelope)
            .map_err(|e| format!("undecodable response envelope: {e}"))?;
        shared.dispatch(response, frame.payload.freeze());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::envelope::{ApiVersionsResponse, ResponseBody};
    use std::io::Read;
    use std::net::TcpListener;

    fn config(timeout_ms: u64) -> ConnectionConfig {
        ConnectionConfig {
            request_timeout_ms: timeout_ms,
            ..ConnectionConfig::default()
        }
    }

    /// Reads request frames off `stream`, returning (correlation id, api).
    fn read_requests(stream: &mut TcpStream, count: usize) -> Vec<(u64, ApiKey, Bytes)> {
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < count {
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                let req = Request::decode(&frame.envelope).unwrap();
                out.push((req.correlation_id, req.body.api(), frame.payload.freeze()));
            }
            if out.len() >= count {
                break;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        out
    }

    fn write_response(stream: &mut TcpStream, response: &Response, payload: &[u8]) {
        let mut fbb = FlatBufferBuilder::new();
        let envelope = response.encode(&mut fbb);
        let mut out = BytesMut::new();
        encode_frame_head(&mut out, envelope, payload.len());
        out.extend_from_slice(payload);
        stream.write_all(&out).unwrap();
    }

    fn versions(correlation_id: u64, version: &str) -> Response {
        Response::ok(
            ApiKey::ApiVersions,
            correlation_id,
            ResponseBody::ApiVersions(ApiVersionsResponse {
                apis: vec![],
                broker_version: version.to_string(),
                max_frame_bytes: 1,
            }),
        )
    }

    #[test]
    fn responses_out_of_order_reach_their_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let requests = read_requests(&mut stream, 3);
            // Answer in reverse order, each carrying its id in the payload.
            for (id, api, payload) in requests.iter().rev() {
                assert_eq!(*api, ApiKey::ApiVersions);
                write_response(&mut stream, &versions(*id, &format!("v{id}")), payload);
            }
            stream
        });
        let conn = Connection::connect(&addr, config(5_000)).unwrap();
        let futures: Vec<_> = (0..3u8)
            .map(|i| {
                conn.request(RequestBody::ApiVersions, vec![Bytes::from(vec![i; 3])])
                    .unwrap()
            })
            .collect();
        for (i, fut) in futures.into_iter().enumerate() {
            let (resp, payload) = fut.wait().unwrap();
            assert_eq!(&payload[..], &[i as u8; 3]);
            match resp.body {
                ResponseBody::ApiVersions(v) => {
                    assert_eq!(v.broker_version, format!("v{}", resp.correlation_id))
                }
                other => panic!("unexpected body {other:?}"),
            }
        }
        assert_eq!(conn.in_flight(), 0);
        drop(server.join().unwrap());
    }

    #[test]
    fn unanswered_request_times_out_and_breaks_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(stream);
        });
        let conn = Connection::connect(&addr, config(100)).unwrap();
        let started = Instant::now();
        let err = conn.call(RequestBody::ApiVersions, vec![]).unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    timeout_ms: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
        assert!(conn.is_broken());
        let err = conn.call(RequestBody::ApiVersions, vec![]).unwrap_err();
        assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn broker_closing_fails_pending_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_requests(&mut stream, 2);
        });
        let conn = Connection::connect(&addr, config(10_000)).unwrap();
        let a = conn.request(RequestBody::ApiVersions, vec![]).unwrap();
        let b = conn.request(RequestBody::ApiVersions, vec![]).unwrap();
        server.join().unwrap();
        assert!(matches!(a.wait(), Err(ClientError::Disconnected { .. })));
        assert!(matches!(b.wait(), Err(ClientError::Disconnected { .. })));
    }

    #[test]
    fn in_flight_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let first = read_requests(&mut stream, 2);
            std::thread::sleep(Duration::from_millis(100));
            for (id, _, _) in &first {
                write_response(&mut stream, &versions(*id, "x"), b"");
            }
            let rest = read_requests(&mut stream, 1);
            write_response(&mut stream, &versions(rest[0].0, "x"), b"");
            std::thread::sleep(Duration::from_millis(50));
        });
        let conn = Connection::connect(
            &addr,
            ConnectionConfig {
                max_in_flight: 2,
                ..config(5_000)
            },
        )
        .unwrap();
        let a = conn.request(RequestBody::ApiVersions, vec![]).unwrap();
        let b = conn.request(RequestBody::ApiVersions, vec![]).unwrap();
        assert_eq!(conn.in_flight(), 2);
        let started = Instant::now();
        // Blocks until the server answers the first two.
        let c = conn.request(RequestBody::ApiVersions, vec![]).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(80));
        a.wait().unwrap();
        b.wait().unwrap();
        c.wait().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn long_polls_get_their_wait_on_top_of_the_request_timeout() {
        let join = RequestBody::JoinGroup(ringmq_wire::envelope::JoinGroupRequest {
            group: "g".into(),
            member_id: String::new(),
            instance_id: String::new(),
            client_id: String::new(),
            mode: ringmq_wire::envelope::GroupMode::Clustering,
            assignor: ringmq_wire::envelope::Assignor::Sticky,
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            ..Default::default()
        });
        // The broker may hold a join for the rebalance timeout plus grace.
        assert_eq!(extra_wait_ms(&join), 30_000 + JOIN_GRACE_MS);
        assert_eq!(extra_wait_ms(&RequestBody::ApiVersions), 0);
    }

    /// A big answer arriving in small pieces is reassembled byte for byte
    /// (the reader grows its buffer and reads into spare capacity).
    #[test]
    fn large_answer_in_small_pieces_arrives_intact() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = payload.clone();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let requests = read_requests(&mut stream, 1);
            let mut fbb = FlatBufferBuilder::new();
            let envelope = versions(requests[0].0, "big").encode(&mut fbb).to_vec();
            let mut out = BytesMut::new();
            encode_frame_head(&mut out, &envelope, payload.len());
            out.extend_from_slice(&payload);
            for (n, piece) in out.chunks(7_919).enumerate() {
                stream.write_all(piece).unwrap();
                if n % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            stream
        });
        let conn = Connection::connect(&addr, config(10_000)).unwrap();
        let (_, got) = conn.call(RequestBody::ApiVersions, vec![]).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got[..] == expected[..], "payload corrupted in reassembly");
        drop(server.join().unwrap());
    }

    #[test]
    fn garbage_from_the_broker_fails_requests_with_the_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_requests(&mut stream, 1);
            // A well-framed frame whose envelope is not a flatbuffer.
            let mut out = Vec::new();
            out.extend_from_slice(&20u32.to_be_bytes());
            out.extend_from_slice(&12u32.to_be_bytes());
            out.extend_from_slice(&[0xAB; 16]);
            stream.write_all(&out).unwrap();
            stream
        });
        let conn = Connection::connect(&addr, config(10_000)).unwrap();
        let err = conn.call(RequestBody::ApiVersions, vec![]).unwrap_err();
        assert!(
            matches!(&err, ClientError::Disconnected { reason, .. } if reason.contains("undecodable response envelope")),
            "{err}"
        );
        assert!(conn.is_broken());
        drop(server.join().unwrap());
    }

    #[test]
    fn truncated_answer_then_close_fails_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let requests = read_requests(&mut stream, 1);
            let mut fbb = FlatBufferBuilder::new();
            let envelope = versions(requests[0].0, "cut").encode(&mut fbb).to_vec();
            let mut out = BytesMut::new();
            // A large frame that stops short: the close must wake the
            // reader while it waits for the rest.
            encode_frame_head(&mut out, &envelope, 2_000_000);
            out.extend_from_slice(&vec![1u8; 300_000]);
            stream.write_all(&out).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        });
        let conn = Connection::connect(&addr, config(10_000)).unwrap();
        let started = Instant::now();
        let err = conn.call(RequestBody::ApiVersions, vec![]).unwrap_err();
        assert!(
            matches!(&err, ClientError::Disconnected { reason, .. } if reason.contains("closed the connection")),
            "{err}"
        );
        // Failed by the close, not by the 10 s request timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        server.join().unwrap();
    }

    #[test]
    fn connect_refused_is_an_io_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Connection::connect(&addr, config(1_000))
            .err()
            .expect("must fail");
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
    }
}
