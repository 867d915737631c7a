//! Kafka framing and the pieces every handler shares: the versions ringmq
//! speaks, response encoding, and our error codes in Kafka's numbering.
//!
//! Message bodies are encoded and decoded by the `kafka-protocol` crate
//! (generated from Kafka's own JSON specs); nothing here parses a message
//! body by hand. The only bytes read directly are the first eight of a
//! request (api key, version, correlation id), which every version of the
//! request header starts with, so that even a request we cannot decode gets
//! an answer with its correlation id.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey as KafkaApi, ResponseHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::ResponseError;
use ringmq_wire::error::{ApiError, ErrorCode};

/// The versions of each API ringmq answers: what librdkafka 2.x,
/// kafka-python and aiokafka negotiate, capped below versions that need
/// topic ids (Produce 13, Fetch 13, Metadata 13) or batched group keys
/// (FindCoordinator 4, OffsetFetch 8), which ringmq does not implement.
/// Produce starts at 3 and Fetch at 4: older versions carry the v0/v1
/// message formats, and ringmq stores only v2 record batches.
pub const SUPPORTED: &[(KafkaApi, i16, i16)] = &[
    (KafkaApi::Produce, 3, 9),
    (KafkaApi::Fetch, 4, 12),
    (KafkaApi::ListOffsets, 1, 7),
    (KafkaApi::Metadata, 0, 12),
    (KafkaApi::OffsetCommit, 2, 8),
    (KafkaApi::OffsetFetch, 1, 7),
    (KafkaApi::FindCoordinator, 0, 3),
    (KafkaApi::JoinGroup, 0, 7),
    (KafkaApi::Heartbeat, 0, 4),
    (KafkaApi::LeaveGroup, 0, 4),
    (KafkaApi::SyncGroup, 0, 5),
    (KafkaApi::DescribeGroups, 0, 5),
    (KafkaApi::ListGroups, 0, 4),
    (KafkaApi::ApiVersions, 0, 3),
    (KafkaApi::CreateTopics, 2, 7),
    (KafkaApi::DeleteTopics, 1, 5),
    (KafkaApi::InitProducerId, 0, 4),
    (KafkaApi::DescribeConfigs, 1, 4),
    (KafkaApi::CreatePartitions, 0, 3),
    (KafkaApi::DeleteGroups, 0, 2),
];

/// The version range ringmq answers for `api`, if it answers it at all.
pub fn supported_range(api: KafkaApi) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (*min, *max))
}

/// The fixed start of every request header version.
#[derive(Debug, Clone, Copy)]
pub struct RawHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads api key, version and correlation id (8 bytes, all header versions).
pub fn peek_header(frame: &[u8]) -> Option<RawHeader> {
    if frame.len() < 8 {
        return None;
    }
    Some(RawHeader {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode the {api:?} v{version} response: {reason}")]
    Body {
        api: KafkaApi,
        version: i16,
        reason: String,
    },
}

/// Encodes `[size][response header][body]` for `api` at `version`.
pub fn encode_response<R: Encodable>(
    api: KafkaApi,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, EncodeError> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let wrap = |e: anyhow::Error| EncodeError::Body {
        api,
        version,
        reason: e.to_string(),
    };
    let size = header.compute_size(header_version).map_err(wrap)?
        + body.compute_size(version).map_err(wrap)?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(i32::try_from(size).expect("responses are bounded by fetch max_bytes"));
    header.encode(&mut out, header_version).map_err(wrap)?;
    body.encode(&mut out, version).map_err(wrap)?;
    debug_assert_eq!(out.len(), 4 + size, "compute_size agrees with encode");
    Ok(out.freeze())
}

/// Our error code in Kafka's numbering, chosen so that a Kafka client
/// retries exactly what ringmq can succeed at later.
pub fn kafka_code(code: ErrorCode) -> i16 {
    use ResponseError as K;
    let k = match code {
        ErrorCode::None => return 0,
        ErrorCode::Unknown => K::UnknownServerError,
        ErrorCode::CorruptMessage | ErrorCode::MalformedFrame => K::CorruptMessage,
        ErrorCode::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ErrorCode::InvalidTopic => K::InvalidTopicException,
        ErrorCode::TopicAlreadyExists => K::TopicAlreadyExists,
        ErrorCode::InvalidPartitions => K::InvalidPartitions,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::MessageTooLarge | ErrorCode::FrameTooLarge => K::MessageTooLarge,
        ErrorCode::InvalidRequest => K::InvalidRequest,
        ErrorCode::UnsupportedVersion | ErrorCode::UnknownApi => K::UnsupportedVersion,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::NotOwner | ErrorCode::ShuttingDown => K::NotLeaderOrFollower,
        // Retriable for Kafka clients: disk full clears when space is freed.
        ErrorCode::StorageError | ErrorCode::DiskFull | ErrorCode::PartitionFenced => {
            K::KafkaStorageError
        }
        ErrorCode::RequestTimedOut | ErrorCode::Throttled => K::RequestTimedOut,
        ErrorCode::NotCoordinator => K::NotCoordinator,
        ErrorCode::CoordinatorLoading => K::CoordinatorLoadInProgress,
        ErrorCode::RebalanceInProgress => K::RebalanceInProgress,
        ErrorCode::IllegalGeneration => K::IllegalGeneration,
        ErrorCode::UnknownMemberId => K::UnknownMemberId,
        ErrorCode::GroupNotEmpty => K::NonEmptyGroup,
        ErrorCode::GroupNotFound => K::GroupIdNotFound,
        ErrorCode::InvalidGroupId => K::InvalidGroupId,
        ErrorCode::InconsistentGroupMode | ErrorCode::InconsistentGroupProtocol => {
            K::InconsistentGroupProtocol
        }
        ErrorCode::InvalidSessionTimeout => K::InvalidSessionTimeout,
        ErrorCode::OutOfOrderSequenceNumber => K::OutOfOrderSequenceNumber,
        ErrorCode::InvalidProducerEpoch => K::InvalidProducerEpoch,
    };
    k.code()
}

pub fn error_code(error: &Option<ApiError>) -> i16 {
    error.as_ref().map(|e| kafka_code(e.code)).unwrap_or(0)
}

pub fn error_message(error: &Option<ApiError>) -> Option<StrBytes> {
    error
        .as_ref()
        .map(|e| StrBytes::from_string(e.message.clone()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_maps_to_a_kafka_code() {
        for code in ErrorCode::ALL {
            let k = kafka_code(code);
            assert_eq!(k == 0, code == ErrorCode::None, "{code:?}");
        }
        assert_eq!(kafka_code(ErrorCode::UnknownTopicOrPartition), 3);
        assert_eq!(kafka_code(ErrorCode::NotCoordinator), 16);
        assert_eq!(kafka_code(ErrorCode::RebalanceInProgress), 27);
        assert_eq!(kafka_code(ErrorCode::IllegalGeneration), 22);
        assert_eq!(kafka_code(ErrorCode::UnknownMemberId), 25);
        assert_eq!(kafka_code(ErrorCode::CorruptMessage), 2);
        assert_eq!(kafka_code(ErrorCode::OutOfOrderSequenceNumber), 45);
    }

    #[test]
    fn supported_versions_are_within_the_codec() {
        for (api, min, max) in SUPPORTED {
            let codec = api.valid_versions();
            assert!(min <= max, "{api:?}");
            assert!(
                codec.min <= *min && *max <= codec.max,
                "{api:?} {min}..{max} outside the codec's {codec}"
            );
        }
    }

    #[test]
    fn header_peek_needs_eight_bytes() {
        assert!(peek_header(&[0, 18, 0, 3, 0, 0, 0]).is_none());
        let h = peek_header(&[0, 18, 0, 3, 0, 0, 1, 2, 9]).unwrap();
        assert_eq!((h.api_key, h.api_version, h.correlation_id), (18, 3, 258));
    }
}
