//! The broker process the torture run owns: spawn, SIGKILL, restart on the
//! same data directory and ports, wait for `/health`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports the broker binds: public, HTTP, and `shards` consecutive
/// shard-aware ports from `shard_base`.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub public: u16,
    pub http: u16,
    pub shard_base: u16,
}

impl Ports {
    /// Every port the broker binds.
    pub fn all(&self, shards: u16) -> Vec<u16> {
        let mut ports = vec![self.public, self.http];
        ports.extend((0..shards).map(|s| self.shard_base + s));
        ports
    }
}

/// Whether nothing listens on `port` now (SO_REUSEADDR set, so TIME_WAIT
/// leftovers do not count; a listener does).
pub fn port_is_free(port: u16) -> bool {
    // std sets SO_REUSEADDR on Unix listeners.
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Picks `2 + shards` free ports at or above `low` (and below `high`),
/// starting at a place chosen by `start`: the public and HTTP ports, then
/// `shards` consecutive ones. Choose a range outside the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`), or an outgoing
/// connection may take a port while the broker is down.
pub fn pick_ports(low: u16, high: u16, shards: u16, start: u64) -> Result<Ports, String> {
    let span = u32::from(high.saturating_sub(low));
    let need = u32::from(shards) + 2;
    if span < need + 1 {
        return Err(format!(
            "port range {low}..{high} is too small for {need} ports"
        ));
    }
    let first = (start % u64::from(span - need)) as u32;
    for step in 0..span {
        let base = u32::from(low) + (first + step) % (span - need);
        let ports: Vec<u16> = (base..base + need).map(|p| p as u16).collect();
        if ports.iter().all(|&p| port_is_free(p)) {
            return Ok(Ports {
                public: ports[0],
                http: ports[1],
                shard_base: ports[2],
            });
        }
    }
    Err(format!("no {need} consecutive free ports in {low}..{high}"))
}

/// Default port range: above the ephemeral range when there is room there,
/// else below it.
pub fn default_port_range() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let (lo, hi) = range
        .as_deref()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if hi + 1 + 500 <= 65535 {
        ((hi + 1) as u16, 65535)
    } else if lo > 10_500 {
        (10_000, lo as u16)
    } else {
        (50_000, 65535)
    }
}

pub struct BrokerProcess {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub ports: Ports,
    pub shards: u16,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl BrokerProcess {
    pub fn new(
        bin: PathBuf,
        data_dir: PathBuf,
        log_path: PathBuf,
        ports: Ports,
        shards: u16,
        extra_args: Vec<String>,
    ) -> BrokerProcess {
        BrokerProcess {
            bin,
            data_dir,
            log_path,
            ports,
            shards,
            extra_args,
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.public)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("cannot open {}: {e}", self.log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.ports.http))
            .arg("--shards")
            .arg(self.shards.to_string())
            .arg("--shard-port-base")
            .arg(self.ports.shard_base.to_string())
            .args(["--kafka", "off"])
            .args(&self.extra_args)
            .env(
                "RINGMQ_LOG",
                std::env::var("RINGMQ_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe. The broker dies with us (if
        // this tool is killed, no broker is left holding ports and data).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the broker and waits until `/health` answers 200. Retries a
    /// start that exits early (a port still held), up to `attempts` times.
    pub fn start(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_ports_released(deadline)?;
            self.spawn()?;
            match self.wait_healthy(deadline) {
                Ok(()) => return Ok(()),
                Err(StartError::Exited(status)) if attempt < 5 && Instant::now() < deadline => {
                    self.log_note(&format!(
                        "ringmq-torture: broker exited during start-up ({status}); retrying"
                    ));
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                Err(e) => {
                    self.kill9();
                    return Err(format!("{e}; broker log: {}", self.log_path.display()));
                }
            }
        }
    }

    fn log_note(&self, line: &str) {
        if let Ok(mut f) = File::options().append(true).open(&self.log_path) {
            let _ = writeln!(f, "{line}");
        }
    }

    fn wait_ports_released(&self, deadline: Instant) -> Result<(), String> {
        for port in self.ports.all(self.shards) {
            loop {
                if port_is_free(port) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("port {port} is still in use"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self, deadline: Instant) -> Result<(), StartError> {
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(StartError::Exited(status.to_string()));
            }
            if let Ok((200, _)) = http_get(self.ports.http, "/health") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL and reap. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after `timeout`); returns
    /// whether it exited cleanly (status 0).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last `max` bytes of the broker's log (for error messages).
    pub fn log_tail(&self, max: usize) -> String {
        let Ok(bytes) = std::fs::read(&self.log_path) else {
            return String::new();
        };
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug)]
enum StartError {
    Exited(String),
    Timeout,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Exited(s) => write!(f, "broker exited during start-up: {s}"),
            StartError::Timeout => write!(f, "broker did not become healthy in time"),
        }
    }
}

/// Minimal HTTP GET on loopback; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
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

/// The broker binary next to this executable.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.exists().then_some(path)
}

/// Whether `path` is a directory this tool may wipe: missing, empty, or
/// marked by an earlier run.
pub fn prepare_work_dir(path: &Path, marker: &str) -> Result<(), String> {
    if path.exists() {
        let is_ours = path.join(marker).exists();
        let is_empty = std::fs::read_dir(path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !is_ours && !is_empty {
            return Err(format!(
                "{} exists and was not made by ringmq-torture (no {marker} in it); pass a new or empty directory",
                path.display()
            ));
        }
        std::fs::remove_dir_all(path)
            .map_err(|e| format!("cannot clear {}: {e}", path.display()))?;
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::fs::write(path.join(marker), b"ringmq-torture work directory\n")
        .map_err(|e| format!("cannot write marker: {e}"))?;
    Ok(())
}
