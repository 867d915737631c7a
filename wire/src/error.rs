//! Protocol error codes. Every error response carries a code and a message;
//! the code is for programs, the message tells a person what to do.

use crate::generated as fb;

/// Error codes shared by the broker and its clients (wire enum `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum ErrorCode {
    None = 0,
    Unknown = 1,
    CorruptMessage = 2,
    UnknownTopicOrPartition = 3,
    InvalidTopic = 4,
    TopicAlreadyExists = 5,
    InvalidPartitions = 6,
    InvalidConfig = 7,
    MessageTooLarge = 8,
    InvalidRequest = 9,
    UnsupportedVersion = 10,
    UnknownApi = 11,
    OffsetOutOfRange = 12,
    NotOwner = 13,
    StorageError = 14,
    DiskFull = 15,
    PartitionFenced = 16,
    RequestTimedOut = 17,
    FrameTooLarge = 18,
    MalformedFrame = 19,
    ShuttingDown = 20,
    Throttled = 21,
    NotCoordinator = 22,
    CoordinatorLoading = 23,
    RebalanceInProgress = 24,
    IllegalGeneration = 25,
    UnknownMemberId = 26,
    GroupNotEmpty = 27,
    GroupNotFound = 28,
    InvalidGroupId = 29,
    InconsistentGroupMode = 30,
    InvalidSessionTimeout = 31,
    /// An idempotent producer's batch does not follow its last sequence.
    OutOfOrderSequenceNumber = 32,
    /// An idempotent producer's epoch is older than the partition has seen.
    InvalidProducerEpoch = 33,
    /// A member's protocol type or protocols do not match the group's.
    InconsistentGroupProtocol = 34,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 35] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::CorruptMessage,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::InvalidTopic,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidConfig,
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownApi,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::NotOwner,
        ErrorCode::StorageError,
        ErrorCode::DiskFull,
        ErrorCode::PartitionFenced,
        ErrorCode::RequestTimedOut,
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedFrame,
        ErrorCode::ShuttingDown,
        ErrorCode::Throttled,
        ErrorCode::NotCoordinator,
        ErrorCode::CoordinatorLoading,
        ErrorCode::RebalanceInProgress,
        ErrorCode::IllegalGeneration,
        ErrorCode::UnknownMemberId,
        ErrorCode::GroupNotEmpty,
        ErrorCode::GroupNotFound,
        ErrorCode::InvalidGroupId,
        ErrorCode::InconsistentGroupMode,
        ErrorCode::InvalidSessionTimeout,
        ErrorCode::OutOfOrderSequenceNumber,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::InconsistentGroupProtocol,
    ];

    pub fn from_i16(code: i16) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| *c as i16 == code)
            .unwrap_or(ErrorCode::Unknown)
    }

    /// Stable snake_case name, used in logs, JSON output and docs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "none",
            ErrorCode::Unknown => "unknown",
            ErrorCode::CorruptMessage => "corrupt_message",
            ErrorCode::UnknownTopicOrPartition => "unknown_topic_or_partition",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TopicAlreadyExists => "topic_already_exists",
            ErrorCode::InvalidPartitions => "invalid_partitions",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownApi => "unknown_api",
            ErrorCode::OffsetOutOfRange => "offset_out_of_range",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::PartitionFenced => "partition_fenced",
            ErrorCode::RequestTimedOut => "request_timed_out",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Throttled => "throttled",
            ErrorCode::NotCoordinator => "not_coordinator",
            ErrorCode::CoordinatorLoading => "coordinator_loading",
            ErrorCode::RebalanceInProgress => "rebalance_in_progress",
            ErrorCode::IllegalGeneration => "illegal_generation",
            ErrorCode::UnknownMemberId => "unknown_member_id",
            ErrorCode::GroupNotEmpty => "group_not_empty",
            ErrorCode::GroupNotFound => "group_not_found",
            ErrorCode::InvalidGroupId => "invalid_group_id",
            ErrorCode::InconsistentGroupMode => "inconsistent_group_mode",
            ErrorCode::InvalidSessionTimeout => "invalid_session_timeout",
            ErrorCode::OutOfOrderSequenceNumber => "out_of_order_sequence_number",
            ErrorCode::InvalidProducerEpoch => "invalid_producer_epoch",
            ErrorCode::InconsistentGroupProtocol => "inconsistent_group_protocol",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotOwner
                | ErrorCode::RequestTimedOut
                | ErrorCode::ShuttingDown
                | ErrorCode::Throttled
                | ErrorCode::DiskFull
                | ErrorCode::NotCoordinator
                | ErrorCode::CoordinatorLoading
        )
    }

    pub fn to_fb(self) -> fb::ErrorCode {
        fb::ErrorCode(self as i16)
    }

    pub fn from_fb(code: fb::ErrorCode) -> ErrorCode {
        ErrorCode::from_i16(code.0)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An error code with its message, as carried in a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_schema() {
        for code in ErrorCode::ALL {
            let fb_code = code.to_fb();
            let name = fb_code
                .variant_name()
                .expect("code missing from the schema");
            let camel: String = code
                .name()
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase())
                        .into_iter()
                        .chain(c)
                        .collect::<String>()
                })
                .collect();
            assert_eq!(name, camel, "{code:?}");
            assert_eq!(ErrorCode::from_fb(fb_code), code);
        }
        assert_eq!(fb::ErrorCode::ENUM_VALUES.len(), ErrorCode::ALL.len());
    }
}
