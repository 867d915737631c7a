//! Client errors. Every message says what went wrong and, where possible,
//! what the user can do about it.

use ringmq_wire::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed (connect, read, write).
    #[error(
        "I/O error talking to {endpoint}: {message} (is the broker running and reachable there?)"
    )]
    Io { endpoint: String, message: String },

    /// The broker answered with an error code.
    #[error("broker error {}{}: {}", .error.code, context_suffix(.context), .error.message)]
    Api { error: ApiError, context: String },

    /// No answer within the request timeout.
    #[error("request {what} to {endpoint} timed out after {timeout_ms} ms (raise request_timeout_ms, or check that the broker is alive)")]
    Timeout {
        what: String,
        endpoint: String,
        timeout_ms: u64,
    },

    /// The connection broke (or was closed) while the request was pending.
    #[error("connection to {endpoint} is closed: {reason}; the request may or may not have been applied (the next call reconnects)")]
    Disconnected { endpoint: String, reason: String },

    /// The broker sent something this client cannot make sense of.
    #[error("protocol violation from {endpoint}: {message} (is this a ringmq broker of a compatible version?)")]
    Protocol { endpoint: String, message: String },

    #[error(
        "unknown topic {topic:?}: create it first (`ringctl topic create {topic} --partitions N`)"
    )]
    UnknownTopic { topic: String },

    #[error("unknown partition {partition} of topic {topic:?}, which has {partition_count} partitions (0..{partition_count})")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partition_count: u32,
    },

    /// The fetch position lies outside the partition's log. The consumer
    /// never resets silently: `seek` to a valid offset to go on.
    #[error("offset {offset} is out of range for {topic}/{partition} (log holds {log_start_offset}..{high_watermark}); seek to a valid offset")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: i64,
        log_start_offset: i64,
        high_watermark: i64,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The producer or consumer was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    }
}

impl ClientError {
    pub fn api(error: ApiError, context: impl Into<String>) -> ClientError {
        ClientError::Api {
            error,
            context: context.into(),
        }
    }

    pub fn io(endpoint: &str, err: &std::io::Error) -> ClientError {
        ClientError::Io {
            endpoint: endpoint.to_string(),
            message: err.to_string(),
        }
    }

    /// The broker's error code, when the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried after refreshing
    /// metadata / reconnecting.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Api { error, .. } => error.code.is_retriable(),
            ClientError::Io { .. } | ClientError::Disconnected { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
