//! Produce: slice the payload per partition, validate every batch, append
//! locally or forward to the owner, then wait for the requested durability.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future::{self, BoxedLocal};
use ringmq_wire::batch::compression::Compression;
use ringmq_wire::batch::header::BatchSplitter;
use ringmq_wire::batch::records::validate_records;
use ringmq_wire::envelope::{
    Acks, ApiKey, ProducePartitionResult, ProduceRequest, ProduceResponse, ProduceTopicResult,
    ResponseBody,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::{log_error_to_api, Reply, Shard};
use crate::mesh::{ProducePart, ShardRequest, ShardResponse};
use glommio::channels::local_channel::LocalReceiver;

type PartResult = (String, ProducePartitionResult);

impl Shard {
    /// Ordered phase of a produce request.
    pub(super) async fn submit_produce(
        self: Rc<Self>,
        request: ProduceRequest,
        payload: BytesMut,
    ) -> BoxedLocal<Reply> {
        let acks = request.acks;
        let slices = match split_payload(&request, payload) {
            Ok(slices) => slices,
            Err(err) => return Box::pin(future::ready(Reply::error(ApiKey::Produce, err))),
        };
        let count = slices.len();
        let mut results: Vec<Option<PartResult>> = (0..count).map(|_| None).collect();
        let mut local: Vec<(usize, String, u32, BoxedLocal<PartResult>)> = Vec::new();
        let mut remote: Vec<Vec<(usize, ProducePart)>> =
            (0..self.config.shard_count).map(|_| Vec::new()).collect();
        for (index, (topic, partition, batches)) in slices.into_iter().enumerate() {
            let part = match self.validate_part(topic.clone(), partition, batches) {
                Ok(part) => part,
                Err(err) => {
                    results[index] = Some((topic, ProducePartitionResult::failed(partition, err)));
                    continue;
                }
            };
            self.metrics
                .record_produce(part.batches.len() as u64, part.record_count as u64);
            let owner = self.owner(&topic, partition);
            if owner == self.id() {
                let fut = self.append_ordered(part, acks).await;
                local.push((index, topic, partition, fut));
            } else {
                remote[owner].push((index, part));
            }
        }
        let mut calls = Vec::new();
        for (owner, parts) in remote.into_iter().enumerate() {
            if !parts.is_empty() {
                calls.push(self.forward_produce(owner, acks, parts).await);
            }
        }
        let deadline = Instant::now() + produce_timeout(request.timeout_ms);
        Box::pin(async move {
            for (index, topic, partition, fut) in local {
                let result = until(deadline, fut).await;
                results[index] = Some(result.unwrap_or_else(|| timed_out(topic, partition)));
            }
            for call in calls {
                call.resolve(&mut results, deadline).await;
            }
            let mut by_topic: Vec<ProduceTopicResult> = Vec::new();
            for (topic, result) in results
                .into_iter()
                .map(|r| r.expect("every part has a result"))
            {
                match by_topic.last_mut() {
                    Some(last) if last.name == topic => last.partitions.push(result),
                    _ => by_topic.push(ProduceTopicResult {
                        name: topic,
                        partitions: vec![result],
                    }),
                }
            }
            let mut reply = Reply::ok(
                ApiKey::Produce,
                ResponseBody::Produce(ProduceResponse { topics: by_topic }),
            );
            reply.silent = acks == Acks::None;
            reply
        })
    }

    /// Enqueues `parts` for `owner` on the mesh now, keeping their order.
    async fn forward_produce(
        &self,
        owner: usize,
        acks: Acks,
        parts: Vec<(usize, ProducePart)>,
    ) -> ForwardedProduce {
        let slots: Vec<(usize, String, u32)> = parts
            .iter()
            .map(|(i, p)| (*i, p.topic.clone(), p.partition))
            .collect();
        let parts: Vec<ProducePart> = parts.into_iter().map(|(_, p)| p).collect();
        self.metrics
            .forwards_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let receiver = self
            .mesh
            .send_call(owner, ShardRequest::Produce { acks, parts })
            .await
            .ok();
        ForwardedProduce {
            owner,
            slots,
            receiver,
        }
    }

    /// Checks the partition exists and every batch in it is well-formed.
    fn validate_part(
        &self,
        topic: String,
        partition: u32,
        batches: BytesMut,
    ) -> Result<ProducePart, ApiError> {
        let catalog = self.check_partition(&topic, partition)?;
        let max_message_bytes = catalog
            .topic(&topic)
            .map(|t| t.config.max_message_bytes)
            .unwrap_or(u32::MAX);
        if batches.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "empty record set for a partition",
            ));
        }
        let mut record_count: u32 = 0;
        for batch in BatchSplitter::new(&batches) {
            let batch =
                batch.map_err(|e| ApiError::new(ErrorCode::CorruptMessage, e.to_string()))?;
            if batch.size > max_message_bytes as usize {
                return Err(ApiError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "batch of {} bytes exceeds max.message.bytes {} of topic {topic:?}; send smaller batches or raise the topic config",
                        batch.size, max_message_bytes
                    ),
                ));
            }
            if batch.header.is_control() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "clients may not produce control batches",
                ));
            }
            if Compression::from_id(batch.header.compression_id()) == Some(Compression::None) {
                let bytes = &batches[batch.position..batch.position + batch.size];
                validate_records(bytes)
                    .map_err(|e| ApiError::new(ErrorCode::CorruptMessage, e.to_string()))?;
            }
            record_count = record_count.saturating_add(batch.header.record_count as u32);
        }
        Ok(ProducePart {
            topic,
            partition,
            batches,
            record_count,
        })
    }

    /// Appends a validated part to a local partition (ordered phase) and
    /// returns the future of its acknowledgement.
    pub(super) async fn append_ordered(
        self: &Rc<Self>,
        part: ProducePart,
        acks: Acks,
    ) -> BoxedLocal<PartResult> {
        let ProducePart {
            topic,
            partition,
            batches,
            ..
        } = part;
        let log = match self.local_log(&topic, partition) {
            Ok(log) => log,
            Err(err) => {
                return Box::pin(future::ready((
                    topic,
                    ProducePartitionResult::failed(partition, err),
                )))
            }
        };
        if let Err(err) = log.reserve(batches.len()).await {
            return Box::pin(future::ready((
                topic,
                ProducePartitionResult::failed(partition, log_error_to_api(&err)),
            )));
        }
        match log.append(batches, super::log_acks(acks)) {
            Err(err) => Box::pin(future::ready((
                topic,
                ProducePartitionResult::failed(partition, log_error_to_api(&err)),
            ))),
            Ok(appended) => {
                let log_start_offset = log.log_start_offset();
                Box::pin(async move {
                    let result = match appended.durable.await {
                        Ok(()) => ProducePartitionResult {
                            partition,
                            error: None,
                            base_offset: appended.base_offset,
                            last_offset: appended.last_offset,
                            log_append_time_ms: appended.log_append_time_ms,
                            log_start_offset,
                        },
                        Err(err) => {
                            ProducePartitionResult::failed(partition, log_error_to_api(&err))
                        }
                    };
                    (topic, result)
                })
            }
        }
    }
}

/// Cuts the payload into one `BytesMut` per partition, without copying.
/// Ranges must lie inside the payload and must not overlap.
fn split_payload(
    request: &ProduceRequest,
    mut payload: BytesMut,
) -> Result<Vec<(String, u32, BytesMut)>, ApiError> {
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new(); // (offset, end, request index)
    let mut names: Vec<(String, u32)> = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            ranges.push((p.payload.offset as usize, p.payload.end(), names.len()));
            names.push((topic.name.clone(), p.partition));
        }
    }
    ranges.sort_unstable();
    let payload_len = payload.len();
    let mut consumed = 0usize;
    let mut pieces: Vec<Option<BytesMut>> = (0..names.len()).map(|_| None).collect();
    for (offset, end, index) in ranges {
        if offset < consumed || end > payload_len {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("payload range {offset}..{end} overlaps another or lies outside the {payload_len}-byte payload"),
            ));
        }
        let _gap = payload.split_to(offset - consumed);
        pieces[index] = Some(payload.split_to(end - offset));
        consumed = end;
    }
    Ok(names
        .into_iter()
        .zip(pieces)
        .map(|((topic, partition), piece)| (topic, partition, piece.expect("every range was cut")))
        .collect())
}

/// Default and cap of a produce request's `timeout_ms`.
const DEFAULT_PRODUCE_TIMEOUT_MS: u32 = 30_000;
const MAX_PRODUCE_TIMEOUT_MS: u32 = 300_000;

fn produce_timeout(timeout_ms: u32) -> Duration {
    let ms = match timeout_ms {
        0 => DEFAULT_PRODUCE_TIMEOUT_MS,
        ms => ms.min(MAX_PRODUCE_TIMEOUT_MS),
    };
    Duration::from_millis(ms as u64)
}

/// `fut`'s output, or `None` once `deadline` passes.
async fn until<T>(deadline: Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        None
    })
    .await
}

/// The answer for a part whose durability did not arrive in time. The batch
/// may still become durable: like Kafka, a timeout means "unknown", and the
/// producer must not assume it was lost.
fn timed_out(topic: String, partition: u32) -> PartResult {
    let err = ApiError::new(
        ErrorCode::RequestTimedOut,
        "the write was not acknowledged within the request timeout; it may still become durable",
    );
    (topic, ProducePartitionResult::failed(partition, err))
}

/// A produce call in flight to another shard, and where its results go.
struct ForwardedProduce {
    owner: usize,
    /// (request index, topic, partition) per part, in the order sent.
    slots: Vec<(usize, String, u32)>,
    receiver: Option<LocalReceiver<ShardResponse>>,
}

impl ForwardedProduce {
    async fn resolve(mut self, results: &mut [Option<PartResult>], deadline: Instant) {
        let response = match self.receiver.take() {
            Some(rx) => until(deadline, rx.recv()).await,
            None => Some(None),
        };
        match response {
            None => {
                for (index, topic, partition) in self.slots {
                    results[index] = Some(timed_out(topic, partition));
                }
            }
            Some(response) => self.fill(results, response),
        }
    }

    fn fill(self, results: &mut [Option<PartResult>], response: Option<ShardResponse>) {
        match response {
            Some(ShardResponse::Produce(replies)) if replies.len() == self.slots.len() => {
                for ((index, _, _), reply) in self.slots.into_iter().zip(replies) {
                    results[index] = Some(reply);
                }
            }
            _ => {
                for (index, topic, partition) in self.slots {
                    let err = ApiError::new(
                        ErrorCode::ShuttingDown,
                        format!("owner shard {} is unavailable; retry", self.owner),
                    );
                    results[index] = Some((topic, ProducePartitionResult::failed(partition, err)));
                }
            }
        }
    }
}
