//! Process start-up: bind every socket, build the mesh, start one pinned
//! glommio executor per shard, wait for a signal, shut down cleanly.

mod connection;
mod http;
mod kafka;
mod shutdown;
mod sockio;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_shards::catalog::TopicConfig;
use ringmq_shards::io::GlommioStorage;
use ringmq_shards::mesh::{build_mesh, Mesh, MeshEnds};
use ringmq_shards::metrics::ShardMetrics;
use ringmq_shards::shard::{Shard, ShardConfig};
use ringmq_wire::envelope::ShardEndpoint;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{parse_cpu_list, KafkaListen, ServeArgs};
use connection::ConnectionLimits;
pub use shutdown::Shutdown;

/// Everything one shard's executor takes with it (all `Send`).
struct ShardBoot {
    config: ShardConfig,
    cpu: usize,
    mesh: MeshEnds,
    public_fd: RawFd,
    shard_fd: RawFd,
    http_fd: Option<RawFd>,
    /// The shared and this shard's own Kafka listeners (`--kafka off`: none).
    kafka_fds: Option<(RawFd, RawFd)>,
    kafka_brokers: Arc<Vec<kafka::KafkaBroker>>,
    producer_ids: Arc<kafka::ProducerIds>,
    limits: ConnectionLimits,
    metrics: Arc<ShardMetrics>,
    all_metrics: Arc<Vec<Arc<ShardMetrics>>>,
    ready: Arc<AtomicUsize>,
    shutdown: Shutdown,
    shutdown_grace_ms: u64,
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let cpus = match &args.cpus {
        Some(list) => parse_cpu_list(list)?,
        None => allowed_cpus(),
    };
    let shard_count = args.shards.unwrap_or(cpus.len()).max(1);
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let _data_dir_lock = lock_data_dir(&args.data_dir)?;
    let public = (0..shard_count)
        .map(|_| bind(args.listen, true))
        .collect::<Result<Vec<_>, _>>()?;
    let shard_port_base = args
        .shard_port_base
        .unwrap_or(args.listen.port().saturating_add(10));
    let shard_sockets = (0..shard_count)
        .map(|i| {
            let port = match shard_port_base {
                0 => 0,
                base => base.checked_add(i as u16).ok_or_else(|| {
                    format!("--shard-port-base {base} + shard {i} overflows; pick a lower base")
                })?,
            };
            bind(SocketAddr::new(args.listen.ip(), port), false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let http = bind(args.http, false)?;
    let (kafka_sockets, kafka_brokers) = bind_kafka(&args, shard_count)?;
    let advertise_host = args
        .advertise_host
        .clone()
        .unwrap_or_else(|| match args.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
            ip => ip.to_string(),
        });
    let endpoints: Vec<ShardEndpoint> = shard_sockets
        .iter()
        .enumerate()
        .map(|(shard, (_, addr))| ShardEndpoint {
            shard: shard as u16,
            host: advertise_host.clone(),
            port: addr.port(),
        })
        .collect();
    let metrics: Vec<Arc<ShardMetrics>> = (0..shard_count)
        .map(|_| Arc::new(ShardMetrics::default()))
        .collect();
    let all_metrics = Arc::new(metrics.clone());
    let ready = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::default();
    let default_topic_config = TopicConfig {
        retention_ms: args.retention_ms,
        retention_bytes: args.retention_bytes,
        segment_bytes: args.segment_bytes,
        segment_ms: args.segment_ms,
        ..TopicConfig::default()
    };
    tracing::info!(
        shards = shard_count,
        listen = %public[0].1,
        http = %http.1,
        shard_ports = ?endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
        data_dir = %args.data_dir.display(),
        kafka_ports = ?kafka_brokers.iter().map(|b| b.port).collect::<Vec<_>>(),
        "ringmq starting"
    );
    let kafka_brokers = Arc::new(kafka_brokers);
    let producer_ids = Arc::new(kafka::ProducerIds::starting_now());
    let mut kafka_sockets = kafka_sockets.into_iter();
    let mut http_fd = Some(http.0.into_raw_fd());
    let mut handles = Vec::with_capacity(shard_count);
    let boots = build_mesh(shard_count)
        .into_iter()
        .zip(public)
        .zip(shard_sockets)
        .enumerate()
        .map(|(shard, ((mesh, public), own))| ShardBoot {
            config: ShardConfig {
                shard,
                shard_count,
                data_dir: args.data_dir.clone(),
                endpoints: endpoints.clone(),
                default_topic_config: default_topic_config.clone(),
                tail_cache_bytes: args.tail_cache_mb << 20,
                readahead: ringmq_shards::log::readahead::ReadAheadSettings {
                    shard_bytes: args.readahead_mb << 20,
                    partition_bytes: args.readahead_partition_mb << 20,
                    chunk_bytes: args.readahead_read_kib << 10,
                },
                max_frame_bytes: args.max_frame_bytes,
                retention_check_ms: args.retention_check_ms,
                offsets_partitions: args.offsets_partitions,
                offsets_segment_bytes: args.offsets_segment_bytes,
                group_settings: ringmq_shards::group::GroupSettings {
                    min_session_timeout_ms: args.group_min_session_timeout_ms,
                    max_session_timeout_ms: args.group_max_session_timeout_ms,
                    ..Default::default()
                },
            },
            cpu: cpus[shard % cpus.len()],
            mesh,
            public_fd: public.0.into_raw_fd(),
            shard_fd: own.0.into_raw_fd(),
            http_fd: if shard == 0 { http_fd.take() } else { None },
            kafka_fds: kafka_sockets
                .next()
                .map(|(public, own)| (public.into_raw_fd(), own.into_raw_fd())),
            kafka_brokers: kafka_brokers.clone(),
            producer_ids: producer_ids.clone(),
            limits: ConnectionLimits {
                max_frame_bytes: args.max_frame_bytes,
                max_in_flight: args.max_in_flight_per_connection.max(1),
            },
            metrics: metrics[shard].clone(),
            all_metrics: all_metrics.clone(),
            ready: ready.clone(),
            shutdown: shutdown.clone(),
            shutdown_grace_ms: args.shutdown_grace_ms,
        })
        .collect::<Vec<_>>();
    for boot in boots {
        let shard = boot.config.shard;
        let builder = LocalExecutorBuilder::new(Placement::Fixed(boot.cpu))
            .name(&format!("shard-{shard}"))
            .io_memory(args.io_memory_mb << 20)
            .spin_before_park(Duration::from_micros(args.spin_before_park_us));
        let handle = builder
            .spawn(move || shard_main(boot))
            .map_err(|e| format!("cannot start shard {shard}: {e}"))?;
        handles.push(handle);
    }
    spawn_signal_thread(shutdown.clone())?;
    install_panic_shutdown(shutdown.clone());
    let mut failure = None;
    for (shard, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                shutdown.trigger();
                failure.get_or_insert(format!("shard {shard}: {err}"));
            }
            Err(err) => {
                shutdown.trigger();
                failure.get_or_insert(format!("shard {shard} crashed: {err}"));
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!("ringmq stopped cleanly");
            Ok(())
        }
    }
}

/// The Kafka listeners: per shard, one socket on the shared port and one on
/// its own port; and each shard as a Kafka broker (node id = shard id).
/// Per shard: its socket on the shared Kafka port, and on its own port.
type KafkaSockets = Vec<(Socket, Socket)>;

fn bind_kafka(
    args: &ServeArgs,
    shard_count: usize,
) -> Result<(KafkaSockets, Vec<kafka::KafkaBroker>), String> {
    let KafkaListen::On(listen) = args.kafka else {
        return Ok((Vec::new(), Vec::new()));
    };
    let port_base = args
        .kafka_shard_port_base
        .unwrap_or(listen.port().saturating_add(10));
    let host = args
        .kafka_advertise_host
        .clone()
        .or_else(|| args.advertise_host.clone())
        .unwrap_or_else(|| match listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
            ip => ip.to_string(),
        });
    let mut sockets = Vec::with_capacity(shard_count);
    let mut brokers = Vec::with_capacity(shard_count);
    let mut shared_addr = listen;
    for shard in 0..shard_count {
        // Port 0 on the shared port: the first bind picks it, the others join.
        let (public, bound) = bind(shared_addr, true)?;
        shared_addr = bound;
        let port = match port_base {
            0 => 0,
            base => base.checked_add(shard as u16).ok_or_else(|| {
                format!(
                    "--kafka-shard-port-base {base} + shard {shard} overflows; pick a lower base"
                )
            })?,
        };
        let (own, own_addr) = bind(SocketAddr::new(listen.ip(), port), false)?;
        brokers.push(kafka::KafkaBroker {
            node_id: shard as i32,
            host: host.clone(),
            port: own_addr.port(),
        });
        sockets.push((public, own));
    }
    Ok((sockets, brokers))
}

/// Binds, retrying "address in use" for a few seconds: a broker restarted
/// right after it exited can find its old listening sockets still held for
/// a few milliseconds while the kernel tears down the old io_uring.
fn bind_with_retry(socket: &Socket, addr: SocketAddr) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match socket.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(format!(
                    "cannot bind {addr}: {e} (is another broker running there?)"
                ))
            }
        }
    }
}

/// Takes an exclusive `flock` on `DIR/.lock` for the life of the process, so
/// two brokers never share a data directory. The kernel drops it on exit,
/// SIGKILL included.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "data directory {} is in use by another ringmq process; stop it or pick another --data-dir",
            data_dir.display()
        ));
    }
    Ok(file)
}

/// Binds a listening socket and returns it with its real address. Only the
/// public port is shared (SO_REUSEPORT, one socket per shard); the
/// shard-aware and HTTP ports are exclusive, so a second broker on the same
/// ports fails loudly instead of silently taking some of the connections.
fn bind(addr: SocketAddr, shared: bool) -> Result<(Socket, SocketAddr), String> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    if shared {
        socket
            .set_reuse_port(true)
            .map_err(|e| format!("SO_REUSEPORT: {e}"))?;
    }
    bind_with_retry(&socket, addr)?;
    socket
        .listen(1024)
        .map_err(|e| format!("listen on {addr}: {e}"))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| format!("cannot read the address bound for {addr}"))?;
    Ok((socket, local))
}

/// CPUs this process may run on (its affinity mask).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
        .collect()
}

/// A panic in any shard stops every shard: otherwise `run` would wait on
/// the healthy ones forever (it joins them in order) while the broker half
/// works. The panic is still reported, and the process exits non-zero.
fn install_panic_shutdown(shutdown: Shutdown) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        shutdown.trigger();
    }));
}

fn spawn_signal_thread(shutdown: Shutdown) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(
                    signal,
                    "shutting down: finishing in-flight requests, flushing logs"
                );
                shutdown.trigger();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

async fn shard_main(boot: ShardBoot) -> Result<(), String> {
    let shard_id = boot.config.shard;
    let (mesh, receivers) = Mesh::connect(boot.mesh).await;
    let shard = match Shard::open(
        boot.config,
        GlommioStorage::new(),
        mesh,
        boot.metrics.clone(),
    )
    .await
    {
        Ok(shard) => shard,
        Err(err) => {
            boot.shutdown.trigger();
            return Err(err);
        }
    };
    for (peer, receiver) in receivers {
        glommio::spawn_local(shard.clone().serve_peer(peer, receiver)).detach();
    }
    glommio::spawn_local(shard.clone().retention_loop()).detach();
    glommio::spawn_local(shard.clone().group_loop()).detach();
    // SAFETY: each fd was bound and listened in `run` and handed to exactly
    // this shard, which now owns it.
    let public = unsafe { TcpListener::from_raw_fd(boot.public_fd) };
    let own = unsafe { TcpListener::from_raw_fd(boot.shard_fd) };
    let accept_public = glommio::spawn_local(accept_loop(
        shard.clone(),
        public,
        boot.limits,
        boot.shutdown.clone(),
    ));
    let accept_own = glommio::spawn_local(accept_loop(
        shard.clone(),
        own,
        boot.limits,
        boot.shutdown.clone(),
    ));
    let kafka = boot.kafka_fds.map(|(public_fd, own_fd)| {
        let ctx = Rc::new(kafka::KafkaContext {
            shard: shard.clone(),
            brokers: boot.kafka_brokers.clone(),
            max_frame_bytes: boot.limits.max_frame_bytes,
            max_in_flight: boot.limits.max_in_flight,
            producer_ids: boot.producer_ids.clone(),
        });
        // SAFETY: as above, bound in `run` and handed to this shard alone.
        let public = unsafe { TcpListener::from_raw_fd(public_fd) };
        let own = unsafe { TcpListener::from_raw_fd(own_fd) };
        (
            glommio::spawn_local(kafka::accept_loop(
                ctx.clone(),
                public,
                boot.shutdown.clone(),
            )),
            glommio::spawn_local(kafka::accept_loop(ctx, own, boot.shutdown.clone())),
        )
    });
    let http = boot.http_fd.map(|fd| {
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let state = Rc::new(http::HttpState {
            shard: shard.clone(),
            all_metrics: boot.all_metrics.clone(),
            ready_shards: boot.ready.clone(),
        });
        glommio::spawn_local(http::serve(listener, state, boot.shutdown.clone()))
    });
    boot.ready.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(shard = shard_id, "shard ready");
    boot.shutdown.wait().await;
    shard.begin_shutdown();
    accept_public.await;
    accept_own.await;
    if let Some((public, own)) = kafka {
        public.await;
        own.await;
    }
    if let Some(http) = http {
        http.await;
    }
    drain(&shard, boot.shutdown_grace_ms).await;
    shard.shutdown().await;
    tracing::debug!(shard = shard_id, "shard stopped");
    Ok(())
}

/// Gives connections up to `grace_ms` to finish their in-flight requests.
async fn drain(shard: &Rc<Shard>, grace_ms: u64) {
    let deadline = std::time::Instant::now() + Duration::from_millis(grace_ms);
    while shard.metrics().connections_open.load(Ordering::Relaxed) > 0
        && std::time::Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    loop {
        let accepted = shutdown.or_cancel(listener.accept()).await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(connection::serve(
                    shard.clone(),
                    stream,
                    limits,
                    shutdown.clone(),
                ))
                .detach();
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
