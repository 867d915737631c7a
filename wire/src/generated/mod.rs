//! `flatc --rust` output for `wire/schema/ringmq.fbs`. Do not edit by hand:
//! run `make gen` (CI checks that this file matches the schema).
mod ringmq_generated;
pub use ringmq_generated::ringmq::wire::fb::*;
