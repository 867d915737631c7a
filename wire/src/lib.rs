//! ringmq-wire: the ringmq protocol, with no I/O.
//!
//! * [`frame`]: `[u32 length][u32 envelope length][flatbuffers envelope][raw payload]`
//!   framing, the maximum frame size, envelope verification.
//! * [`generated`]: `flatc` output for `schema/ringmq.fbs` (committed; `make gen`).
//! * [`envelope`]: typed builders/readers over the generated code.
//! * [`group_api`]: owned types of the consumer-group APIs.
//! * [`batch`]: Kafka v2 record batches (validate, build, iterate, compress).
//! * [`error`]: protocol error codes shared by broker and clients.

pub mod batch;
pub mod envelope;
pub mod error;
pub mod frame;
#[allow(clippy::all, unused_imports, dead_code, non_snake_case, non_camel_case_types, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
pub mod generated;
pub mod group_api;
pub mod murmur2;
