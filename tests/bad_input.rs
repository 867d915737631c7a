//! Bad input gets a documented error and loses nothing; the broker keeps
//! serving other connections.

mod common;

use common::{Broker, RawConn};
use flatbuffers::FlatBufferBuilder;
use ringmq_wire::batch::{BatchBuilder, Compression};
use ringmq_wire::envelope::*;
use ringmq_wire::error::ErrorCode;
use ringmq_wire::generated as fb;

fn create_topic(conn: &mut RawConn, name: &str, partitions: u32) -> Option<ErrorCode> {
    let (response, _) = conn.call(
        1,
        RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.into(),
                partitions,
                configs: vec![],
            }],
            timeout_ms: 10_000,
        }),
        &[],
    );
    match response.body {
        ResponseBody::CreateTopics(r) => r.results[0].error.as_ref().map(|e| e.code),
        other => panic!("unexpected {other:?}"),
    }
}

fn produce_body(topic: &str, partition: u32, len: usize) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks: Acks::Fsync,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition,
                payload: PayloadRange {
                    offset: 0,
                    length: len as u32,
                },
            }],
        }],
    })
}

fn one_batch(values: &[&str]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None, 1_000);
    for v in values {
        builder
            .append(1_000, None, Some(v.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap().to_vec()
}

fn produce_error(response: &Response) -> Option<ErrorCode> {
    match &response.body {
        ResponseBody::Produce(p) => p.topics[0].partitions[0].error.as_ref().map(|e| e.code),
        other => panic!(
            "unexpected {other:?} (whole-request error {:?})",
            response.error
        ),
    }
}

fn metadata_works(addr: &str) {
    let mut conn = RawConn::connect(addr);
    let (response, _) = conn.call(
        77,
        RequestBody::Metadata(MetadataRequest { topics: None }),
        &[],
    );
    assert!(response.error.is_none());
    assert!(matches!(response.body, ResponseBody::Metadata(_)));
}

#[test]
fn bad_input_gets_documented_errors_and_broker_keeps_serving() {
    let mut broker = Broker::start(2);
    let addr = broker.addr();
    let mut conn = RawConn::connect(&addr);
    assert_eq!(create_topic(&mut conn, "events", 4), None);

    // Invalid topic names.
    for bad in ["bad/name", "", "__reserved", "white space"] {
        assert_eq!(
            create_topic(&mut conn, bad, 1),
            Some(ErrorCode::InvalidTopic),
            "{bad:?}"
        );
    }
    assert_eq!(
        create_topic(&mut conn, "events", 4),
        Some(ErrorCode::TopicAlreadyExists)
    );
    assert_eq!(
        create_topic(&mut conn, "zero", 0),
        Some(ErrorCode::InvalidPartitions)
    );

    // Unknown topic and unknown partition.
    let batch = one_batch(&["a"]);
    let (r, _) = conn.call(2, produce_body("nope", 0, batch.len()), &batch);
    assert_eq!(produce_error(&r), Some(ErrorCode::UnknownTopicOrPartition));
    let (r, _) = conn.call(3, produce_body("events", 99, batch.len()), &batch);
    assert_eq!(produce_error(&r), Some(ErrorCode::UnknownTopicOrPartition));

    // A batch whose CRC no longer matches (one byte of a value flipped).
    let mut corrupt = one_batch(&["hello", "world"]);
    let last = corrupt.len() - 3;
    corrupt[last] ^= 0x40;
    let (r, _) = conn.call(4, produce_body("events", 0, corrupt.len()), &corrupt);
    assert_eq!(produce_error(&r), Some(ErrorCode::CorruptMessage));
    // A payload range that lies outside the payload.
    let (r, _) = conn.call(5, produce_body("events", 0, batch.len() + 10), &batch);
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(ErrorCode::InvalidRequest)
    );
    // Truncated batch.
    let (r, _) = conn.call(
        6,
        produce_body("events", 0, batch.len() - 5),
        &batch[..batch.len() - 5],
    );
    assert_eq!(produce_error(&r), Some(ErrorCode::CorruptMessage));

    // The good batch still goes in at offset 0: nothing bad was appended.
    let (r, _) = conn.call(7, produce_body("events", 0, batch.len()), &batch);
    match &r.body {
        ResponseBody::Produce(p) => {
            let part = &p.topics[0].partitions[0];
            assert!(part.error.is_none(), "{:?}", part.error);
            assert_eq!(part.base_offset, 0);
        }
        other => panic!("{other:?}"),
    }

    // Unknown API: answered by correlation id, connection stays usable.
    let mut fbb = FlatBufferBuilder::new();
    let header = fb::RequestHeader::create(
        &mut fbb,
        &fb::RequestHeaderArgs {
            api: fb::ApiKey(4242),
            version: 0,
            correlation_id: 99,
            client_id: None,
        },
    );
    let root = fb::Request::create(
        &mut fbb,
        &fb::RequestArgs {
            header: Some(header),
            ..Default::default()
        },
    );
    fbb.finish(root, None);
    let mut frame = bytes::BytesMut::new();
    ringmq_wire::frame::encode_frame_head(&mut frame, fbb.finished_data(), 0);
    conn.send_raw(&frame);
    let (r, _) = conn.recv().unwrap();
    assert_eq!(r.correlation_id, 99);
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(ErrorCode::UnknownApi)
    );

    // A garbage envelope in a well-delimited frame: error, connection lives.
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&(4u32 + 16).to_be_bytes());
    garbage.extend_from_slice(&16u32.to_be_bytes());
    garbage.extend_from_slice(&[0xAB; 16]);
    conn.send_raw(&garbage);
    let (r, _) = conn.recv().unwrap();
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(ErrorCode::MalformedFrame)
    );
    let (r, _) = conn.call(8, RequestBody::ApiVersions, &[]);
    assert!(r.error.is_none());

    // An oversize frame: refused before buffering, then the connection closes.
    let mut big = RawConn::connect(&addr);
    big.send_raw(&(1u32 << 30).to_be_bytes());
    let (r, _) = big.recv().expect("an error before closing");
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(ErrorCode::FrameTooLarge)
    );
    assert!(
        big.recv().is_none(),
        "connection closed after an unframeable frame"
    );

    // An envelope length larger than its frame: unframeable, closed.
    let mut lying = RawConn::connect(&addr);
    let mut bad = Vec::new();
    bad.extend_from_slice(&8u32.to_be_bytes());
    bad.extend_from_slice(&1000u32.to_be_bytes());
    bad.extend_from_slice(&[0; 4]);
    lying.send_raw(&bad);
    let (r, _) = lying.recv().expect("an error before closing");
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(ErrorCode::MalformedFrame)
    );

    // Other connections were never affected.
    metadata_works(&addr);
    assert!(broker.is_running());
}
