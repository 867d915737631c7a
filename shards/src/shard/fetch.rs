//! Fetch (with long poll) and ListOffsets.
//!
//! A fetch answers with whole batches exactly as stored: tail-cache `Bytes`
//! or one DMA read per partition, placed after the envelope untouched.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::EventListener;
use ringmq_wire::envelope::{
    ApiKey, FetchPartition, FetchPartitionResult, FetchRequest, FetchResponse, FetchTopicResult,
    ListOffsetsPartition, ListOffsetsPartitionResult, ListOffsetsRequest, ListOffsetsResponse,
    ListOffsetsTopicResult, PayloadRange, ResponseBody, LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::{log_error_to_api, Reply, Shard};
use crate::mesh::{ShardRequest, ShardResponse};

/// Longest long-poll a client may ask for.
pub const MAX_WAIT_MS_LIMIT: u32 = 60_000;

type FetchPart = (String, FetchPartitionResult, Vec<Bytes>);

impl Shard {
    /// Completion of a fetch request (runs as its own task: a long poll never
    /// holds up the connection's other requests).
    pub(super) async fn fetch(self: Rc<Self>, request: FetchRequest) -> Reply {
        if let Some(fence) = &request.fence {
            for topic in &request.topics {
                for p in &topic.partitions {
                    if let Err(err) = self.check_fetch_fence(fence, &topic.name, p.partition) {
                        return Reply::error(ApiKey::Fetch, err);
                    }
                }
            }
        }
        let max_wait_ms = request.max_wait_ms.min(MAX_WAIT_MS_LIMIT);
        // The response must fit in the frames clients accept: stay well below.
        let frame_budget_bytes = (self.config.max_frame_bytes / 2) as u32;
        let max_bytes = match request.max_bytes {
            0 => frame_budget_bytes,
            requested => requested.min(frame_budget_bytes),
        };
        let mut order: Vec<(String, u32)> = Vec::new();
        let mut by_owner: Vec<Vec<(String, FetchPartition)>> =
            (0..self.config.shard_count).map(|_| Vec::new()).collect();
        for topic in &request.topics {
            for p in &topic.partitions {
                order.push((topic.name.clone(), p.partition));
                let owner = match self.check_partition(&topic.name, p.partition) {
                    Ok(_) => self.owner(&topic.name, p.partition),
                    // Unknown partitions are answered locally with an error.
                    Err(_) => self.id(),
                };
                by_owner[owner].push((topic.name.clone(), *p));
            }
        }
        // Remote parts go out first so they wait in parallel with ours.
        let mut remote_tasks = Vec::new();
        for (owner, parts) in by_owner.iter_mut().enumerate() {
            if owner == self.id() || parts.is_empty() {
                continue;
            }
            let parts = std::mem::take(parts);
            let shard = self.clone();
            self.metrics
                .forwards_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            remote_tasks.push(glommio::spawn_local(async move {
                let call = ShardRequest::Fetch {
                    max_wait_ms,
                    min_bytes: request.min_bytes,
                    max_bytes,
                    parts: parts.clone(),
                };
                match shard.mesh.call(owner, call).await {
                    Ok(ShardResponse::Fetch(results)) => results,
                    _ => parts
                        .into_iter()
                        .map(|(t, p)| {
                            let err = ApiError::new(
                                ErrorCode::ShuttingDown,
                                format!("owner shard {owner} is unavailable; retry"),
                            );
                            (
                                t,
                                FetchPartitionResult::failed(p.partition, err),
                                Vec::new(),
                            )
                        })
                        .collect(),
                }
            }));
        }
        let local_parts = std::mem::take(&mut by_owner[self.id()]);
        let mut results: Vec<FetchPart> = if local_parts.is_empty() {
            Vec::new()
        } else {
            self.fetch_local(local_parts, max_wait_ms, request.min_bytes, max_bytes)
                .await
        };
        for task in remote_tasks {
            results.extend(task.await);
        }
        assemble_fetch(order, results)
    }

    /// Reads local partitions, long-polling until `min_bytes` are available
    /// or `max_wait_ms` passes. Listeners are registered *before* each read,
    /// so an append between the read and the wait is never missed.
    pub(super) async fn fetch_local(
        &self,
        parts: Vec<(String, FetchPartition)>,
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
    ) -> Vec<FetchPart> {
        let deadline = Instant::now() + Duration::from_millis(max_wait_ms as u64);
        loop {
            let mut listeners: Vec<EventListener> = Vec::with_capacity(parts.len() + 1);
            listeners.push(self.shutdown_listener());
            for (topic, p) in &parts {
                if let Ok(log) = self.local_log(topic, p.partition) {
                    listeners.push(log.watch());
                }
            }
            let results = self.read_parts(&parts, max_bytes).await;
            let total_bytes: usize = results
                .iter()
                .flat_map(|(_, _, c)| c.iter())
                .map(Bytes::len)
                .sum();
            let any_error = results.iter().any(|(_, r, _)| r.error.is_some());
            let now = Instant::now();
            if total_bytes >= min_bytes as usize
                || any_error
                || now >= deadline
                || self.is_shutting_down()
            {
                return results;
            }
            wait_any(listeners, deadline - now).await;
        }
    }

    async fn read_parts(
        &self,
        parts: &[(String, FetchPartition)],
        max_bytes: u32,
    ) -> Vec<FetchPart> {
        let mut budget_bytes = max_bytes as usize;
        let mut results = Vec::with_capacity(parts.len());
        for (topic, p) in parts {
            let result = self.read_one(topic, p, budget_bytes).await;
            let read_bytes: usize = result.1.iter().map(Bytes::len).sum();
            budget_bytes = budget_bytes.saturating_sub(read_bytes);
            results.push((topic.clone(), result.0, result.1));
        }
        results
    }

    async fn read_one(
        &self,
        topic: &str,
        p: &FetchPartition,
        budget_bytes: usize,
    ) -> (FetchPartitionResult, Vec<Bytes>) {
        let log = match self
            .check_partition(topic, p.partition)
            .and_then(|_| self.local_log(topic, p.partition))
        {
            Ok(log) => log,
            Err(err) => return (FetchPartitionResult::failed(p.partition, err), Vec::new()),
        };
        let partition_max = if p.partition_max_bytes == 0 {
            usize::MAX
        } else {
            p.partition_max_bytes as usize
        };
        let limit_bytes = partition_max.min(budget_bytes);
        if limit_bytes == 0 {
            return (
                ok_result(p.partition, log.high_watermark(), log.log_start_offset(), 0),
                Vec::new(),
            );
        }
        match log.read(p.fetch_offset, limit_bytes).await {
            Ok(data) => {
                let bytes: usize = data.chunks.iter().map(Bytes::len).sum();
                self.metrics.record_fetch(bytes as u64);
                (
                    ok_result(
                        p.partition,
                        data.high_watermark,
                        data.log_start_offset,
                        bytes,
                    ),
                    data.chunks,
                )
            }
            Err(err) => {
                let mut result = FetchPartitionResult::failed(p.partition, log_error_to_api(&err));
                result.high_watermark = log.high_watermark();
                result.log_start_offset = log.log_start_offset();
                (result, Vec::new())
            }
        }
    }

    /// Completion of a ListOffsets request.
    pub(super) async fn list_offsets(self: Rc<Self>, request: ListOffsetsRequest) -> Reply {
        let mut parts = Vec::new();
        for topic in &request.topics {
            for p in &topic.partitions {
                parts.push((topic.name.clone(), *p));
            }
        }
        let mut results: Vec<(String, ListOffsetsPartitionResult)> =
            Vec::with_capacity(parts.len());
        for (topic, p) in parts {
            let owner = match self.check_partition(&topic, p.partition) {
                Ok(_) => self.owner(&topic, p.partition),
                Err(_) => self.id(),
            };
            if owner == self.id() {
                results.extend(self.list_offsets_local(vec![(topic, p)]).await);
                continue;
            }
            self.metrics
                .forwards_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self
                .mesh
                .call(owner, ShardRequest::ListOffsets(vec![(topic.clone(), p)]))
                .await
            {
                Ok(ShardResponse::ListOffsets(r)) => results.extend(r),
                _ => results.push((
                    topic,
                    ListOffsetsPartitionResult {
                        partition: p.partition,
                        error: Some(ApiError::new(
                            ErrorCode::ShuttingDown,
                            format!("owner shard {owner} is unavailable; retry"),
                        )),
                        offset: -1,
                        timestamp: -1,
                    },
                )),
            }
        }
        let mut topics: Vec<ListOffsetsTopicResult> = Vec::new();
        for (name, result) in results {
            match topics.last_mut() {
                Some(last) if last.name == name => last.partitions.push(result),
                _ => topics.push(ListOffsetsTopicResult {
                    name,
                    partitions: vec![result],
                }),
            }
        }
        Reply::ok(
            ApiKey::ListOffsets,
            ResponseBody::ListOffsets(ListOffsetsResponse { topics }),
        )
    }

    pub(super) async fn list_offsets_local(
        &self,
        parts: Vec<(String, ListOffsetsPartition)>,
    ) -> Vec<(String, ListOffsetsPartitionResult)> {
        let mut results = Vec::with_capacity(parts.len());
        for (topic, p) in parts {
            let result = self.list_offset_one(&topic, &p).await;
            results.push((topic, result));
        }
        results
    }

    async fn list_offset_one(
        &self,
        topic: &str,
        p: &ListOffsetsPartition,
    ) -> ListOffsetsPartitionResult {
        let failed = |error: ApiError| ListOffsetsPartitionResult {
            partition: p.partition,
            error: Some(error),
            offset: -1,
            timestamp: -1,
        };
        let log = match self
            .check_partition(topic, p.partition)
            .and_then(|_| self.local_log(topic, p.partition))
        {
            Ok(log) => log,
            Err(err) => return failed(err),
        };
        let found = |offset: i64, timestamp: i64| ListOffsetsPartitionResult {
            partition: p.partition,
            error: None,
            offset,
            timestamp,
        };
        match p.timestamp {
            LIST_OFFSETS_EARLIEST => found(log.log_start_offset(), -1),
            LIST_OFFSETS_LATEST => found(log.high_watermark(), -1),
            ts if ts >= 0 => match log.offset_for_timestamp(ts).await {
                Ok(Some((offset, timestamp))) => found(offset, timestamp),
                // Nothing at or after `ts` yet: the next offset to be written.
                Ok(None) => found(log.high_watermark(), -1),
                Err(err) => failed(log_error_to_api(&err)),
            },
            other => failed(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "timestamp {other} is invalid: use -2 (earliest), -1 (latest) or a time in ms"
                ),
            )),
        }
    }
}

fn ok_result(
    partition: u32,
    high_watermark: i64,
    log_start_offset: i64,
    length: usize,
) -> FetchPartitionResult {
    FetchPartitionResult {
        partition,
        error: None,
        high_watermark,
        log_start_offset,
        payload: PayloadRange {
            offset: 0,
            length: length as u32,
        },
    }
}

/// Puts partition results back in request order and lays their chunks out
/// back to back in the payload.
fn assemble_fetch(order: Vec<(String, u32)>, mut results: Vec<FetchPart>) -> Reply {
    let mut topics: Vec<FetchTopicResult> = Vec::new();
    let mut payload: Vec<Bytes> = Vec::new();
    let mut payload_bytes: usize = 0;
    for (topic, partition) in order {
        let position = results
            .iter()
            .position(|(t, r, _)| *t == topic && r.partition == partition);
        let (_, mut result, chunks) = match position {
            Some(i) => results.swap_remove(i),
            None => (
                topic.clone(),
                FetchPartitionResult::failed(
                    partition,
                    super::unknown_partition(&topic, partition),
                ),
                Vec::new(),
            ),
        };
        let length: usize = chunks.iter().map(Bytes::len).sum();
        result.payload = PayloadRange {
            offset: payload_bytes as u32,
            length: length as u32,
        };
        payload_bytes += length;
        payload.extend(chunks);
        match topics.last_mut() {
            Some(last) if last.name == topic => last.partitions.push(result),
            _ => topics.push(FetchTopicResult {
                name: topic,
                partitions: vec![result],
            }),
        }
    }
    // The frame length is a u32 and the broker caps frames; never exceed it.
    assert!(payload_bytes < u32::MAX as usize);
    let mut reply = Reply::ok(ApiKey::Fetch, ResponseBody::Fetch(FetchResponse { topics }));
    reply.payload = payload;
    reply
}

/// Waits until any listener fires or `timeout` passes.
async fn wait_any(mut listeners: Vec<EventListener>, timeout: Duration) {
    let mut timer = glommio::timer::Timer::new(timeout);
    futures_lite::future::poll_fn(|cx| {
        for listener in listeners.iter_mut() {
            if Pin::new(listener).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        if Pin::new(&mut timer).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}
