//! Test harness: real `ringmq` processes on loopback with temporary data
//! directories, real signals, raw protocol connections.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use ringmq_wire::envelope::{Request, RequestBody, Response};
use ringmq_wire::frame::{encode_frame_head, FrameDecoder};

/// Path of a binary built by `cargo build --workspace --bins` (the test
/// executable lives in target/<profile>/deps/).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A port that is free now and that the kernel will not hand out as an
/// ephemeral port later: it lies below `ip_local_port_range`. A port the
/// kernel picked (bind to port 0) is ephemeral, and after a broker stops
/// its ports could be taken by any outgoing connection or by another
/// broker's `--shard-port-base 0` listeners before `restart` binds them
/// again ("Address already in use", or worse, SO_REUSEPORT sharing).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = 10_000u32;
    if ephemeral_low <= low + 1_000 {
        // An unusual range: fall back to a kernel-picked port.
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = ephemeral_low - low;
    // Test binaries (and concurrent cargo runs) start at different places.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let port = low + NEXT.fetch_add(7, Ordering::SeqCst) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {low}..{ephemeral_low}");
}

/// Waits (up to 10 s) until no socket listens on `port` any more. A broker
/// that has exited (even cleanly, and even once reaped) can keep its
/// listening sockets for a few milliseconds: glommio's pending io_uring
/// accepts hold them until the kernel tears the ring down asynchronously.
/// A restart inside that window fails with "Address already in use".
/// The probe sets SO_REUSEADDR (so TIME_WAIT leftovers do not count) but
/// not SO_REUSEPORT (so a listener does).
pub fn wait_port_released(port: u16) {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        if socket.bind(&addr.into()).is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!("port {port} is still in use 10 s after the broker stopped");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Broker {
    pub data_dir: PathBuf,
    pub port: u16,
    pub http_port: u16,
    /// The shared Kafka listener (`--kafka`); the per-shard Kafka brokers
    /// get ephemeral ports (`--kafka-shard-port-base 0`) that Metadata
    /// reports. Kept across `restart`.
    pub kafka_port: u16,
    pub shards: usize,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker with `shards` shards in a fresh temporary directory.
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, &[])
    }

    pub fn start_with(shards: usize, extra_args: &[&str]) -> Broker {
        let temp = tempfile::Builder::new()
            .prefix("ringmq-test")
            .tempdir_in(test_tmp_root())
            .unwrap();
        let mut broker = Broker {
            data_dir: temp.path().join("data"),
            port: free_port(),
            http_port: free_port(),
            kafka_port: free_port(),
            shards,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            _temp: Some(temp),
        };
        broker.spawn();
        broker
    }

    /// Starts a broker on an existing data directory (kept by the caller).
    pub fn start_in(data_dir: &Path, shards: usize, extra_args: &[&str]) -> Broker {
        let mut broker = Broker {
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            http_port: free_port(),
            kafka_port: free_port(),
            shards,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            _temp: None,
        };
        broker.spawn();
        broker
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr().parse().unwrap()
    }

    /// The shared Kafka port, as a bootstrap address for Kafka clients.
    pub fn kafka_addr(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin_path("ringmq"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--shards")
            .arg(self.shards.to_string())
            .arg("--shard-port-base")
            .arg("0");
        // A test that sets its own Kafka options (e.g. `--kafka off`) keeps them.
        let has = |flag: &str| {
            self.extra_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        if !has("--kafka") {
            cmd.arg("--kafka").arg(self.kafka_addr());
        }
        if !has("--kafka-shard-port-base") {
            cmd.arg("--kafka-shard-port-base").arg("0");
        }
        cmd.args(&self.extra_args)
            .env(
                "RINGMQ_LOG",
                std::env::var("RINGMQ_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("spawn ringmq"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ringmq exited during start-up: {status}");
            }
            if let Ok((200, _)) = http_get(self.http_port, "/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ringmq did not become healthy within 60 s");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: no flush, no clean close.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ringmq did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        wait_port_released(self.port);
        wait_port_released(self.http_port);
        wait_port_released(self.kafka_port);
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn ringctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        ringctl(&self.addr(), args, stdin)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where test data directories go: the target directory (a real disk, so
/// O_DIRECT is exercised), unless RINGMQ_TEST_TMP says otherwise.
pub fn test_tmp_root() -> PathBuf {
    if let Ok(dir) = std::env::var("RINGMQ_TEST_TMP") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap();
    let dir = target.join("test-tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn ringctl(broker: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin_path("ringctl"));
    cmd.arg("--broker").arg(broker).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child.wait_with_output().unwrap()
}

/// Minimal HTTP GET; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A raw native-protocol connection for tests that speak bytes directly.
pub struct RawConn {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
    fbb: FlatBufferBuilder<'static>,
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            decoder: FrameDecoder::new(256 << 20),
            buf: BytesMut::new(),
            fbb: FlatBufferBuilder::new(),
        }
    }

    pub fn send(&mut self, correlation_id: u64, body: RequestBody, payload: &[u8]) {
        let request = Request::new(correlation_id, body);
        let mut frame = BytesMut::new();
        encode_frame_head(&mut frame, request.encode(&mut self.fbb), payload.len());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one response; `None` on end of stream.
    pub fn recv(&mut self) -> Option<(Response, Bytes)> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("broker sends valid frames")
            {
                let response =
                    Response::decode(&frame.envelope).expect("broker sends valid envelopes");
                return Some((response, frame.payload.freeze()));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Creates a topic and asserts that it worked.
    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        let body = RequestBody::CreateTopics(ringmq_wire::envelope::CreateTopicsRequest {
            topics: vec![ringmq_wire::envelope::NewTopic {
                name: name.into(),
                partitions,
                configs: vec![],
            }],
            timeout_ms: 10_000,
        });
        let (r, _) = self.call(2, body, &[]);
        match r.body {
            ringmq_wire::envelope::ResponseBody::CreateTopics(t) => {
                assert!(t.results[0].error.is_none(), "{t:?}")
            }
            other => panic!("unexpected {other:?} {:?}", r.error),
        }
    }

    pub fn call(
        &mut self,
        correlation_id: u64,
        body: RequestBody,
        payload: &[u8],
    ) -> (Response, Bytes) {
        self.send(correlation_id, body, payload);
        let (response, payload) = self.recv().expect("a response");
        assert_eq!(response.correlation_id, correlation_id);
        (response, payload)
    }
}

/// Sum over shards of a per-shard counter in `/metrics`
/// (`NAME{shard="S"} VALUE` lines).
pub fn metric_sum(http_port: u16, name: &str) -> i64 {
    metric_by_shard(http_port, name)
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// `(shard, value)` of every `NAME{shard="S"} VALUE` line in `/metrics`.
pub fn metric_by_shard(http_port: u16, name: &str) -> Vec<(u16, i64)> {
    let (status, body) = http_get(http_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    let prefix = format!("{name}{{shard=\"");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (shard, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?;
            Some((shard.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// Runs ringctl like [`ringctl`], killing it (and panicking) if it has not
/// exited within `timeout`.
pub fn ringctl_timeout(
    broker: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let child = spawn_ringctl(broker, args, stdin);
    wait_output_timeout(child, timeout, &format!("ringctl {args:?}"))
}

/// Starts ringctl with piped stdout/stderr; `stdin` is written (then closed)
/// from a helper thread.
pub fn spawn_ringctl(broker: &str, args: &[&str], stdin: Option<&[u8]>) -> Child {
    let mut cmd = Command::new(bin_path("ringctl"));
    cmd.arg("--broker").arg(broker).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child
}

/// Collects a child's output, killing it (and panicking with what it printed
/// so far) if it runs longer than `timeout`.
pub fn wait_output_timeout(mut child: Child, timeout: Duration, what: &str) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap();
            let err = stderr.join().unwrap();
            panic!(
                "{what} did not exit within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
