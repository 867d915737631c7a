//! The Kafka protocol listener (DESIGN.md 3.7): unmodified Kafka clients
//! (librdkafka and everything built on it, kcat, kafka-python, the Java
//! client) talk to ringmq.
//!
//! Every shard serves the shared Kafka port (SO_REUSEPORT) and its own port,
//! and each shard is advertised as its own Kafka broker: node id = shard id,
//! so a client connects straight to the core that owns a partition or a
//! group, and the shared port still answers everything (forwarding over the
//! mesh like the native port does). Requests are translated into the native
//! owned request types and run through `Shard::submit`; record batches pass
//! through untouched in both directions (ringmq stores Kafka v2 batches).

mod admin;
mod codec;
mod connection;
mod groups;
mod handlers;

use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use ringmq_shards::shard::Shard;

use super::shutdown::Shutdown;

/// One shard as a Kafka broker.
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
}

/// What a Kafka connection on one shard shares with the others.
pub struct KafkaContext {
    pub shard: Rc<Shard>,
    /// Every shard's advertised Kafka endpoint, indexed by shard.
    pub brokers: Arc<Vec<KafkaBroker>>,
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
    pub producer_ids: Arc<ProducerIds>,
}

/// Hands out idempotent-producer ids, unique across shards and restarts.
///
/// The sequence state that idempotence checks lives with each partition
/// (rebuilt from its log on start), so an id needs no state of its own, only
/// uniqueness: ids start at the start-up time in ms × 1024 and count up.
/// A restart 1 ms later starts 1,024 ids higher, so a collision would need
/// more than a million ids per second of the previous run's uptime.
#[derive(Debug)]
pub struct ProducerIds {
    next: AtomicI64,
}

/// Ids per millisecond of wall-clock time reserved between two starts.
const PRODUCER_IDS_PER_MS: i64 = 1024;

impl ProducerIds {
    pub fn starting_now() -> ProducerIds {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        ProducerIds::starting_at(now_ms * PRODUCER_IDS_PER_MS)
    }

    fn starting_at(first: i64) -> ProducerIds {
        assert!(first >= 0);
        ProducerIds {
            next: AtomicI64::new(first),
        }
    }

    /// A new (id, epoch 0), or, for a producer that names its current id and
    /// epoch (KIP-360, InitProducerId v3+), the same id with the next epoch.
    pub fn next(&self, current_id: i64, current_epoch: i16) -> (i64, i16) {
        if current_id >= 0 && (0..i16::MAX - 1).contains(&current_epoch) {
            return (current_id, current_epoch + 1);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(id >= 0, "producer ids exhausted");
        (id, 0)
    }
}

pub async fn accept_loop(ctx: Rc<KafkaContext>, listener: TcpListener, shutdown: Shutdown) {
    loop {
        match shutdown.or_cancel(listener.accept()).await {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(connection::serve(ctx.clone(), stream, shutdown.clone()))
                    .detach();
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "kafka accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_are_fresh_or_bump_the_epoch() {
        let ids = ProducerIds::starting_at(1_000);
        assert_eq!(ids.next(-1, -1), (1_000, 0));
        assert_eq!(ids.next(-1, -1), (1_001, 0));
        assert_eq!(ids.next(1_000, 0), (1_000, 1));
        // An exhausted epoch gets a new id.
        assert_eq!(ids.next(1_000, i16::MAX - 1), (1_002, 0));
    }
}
