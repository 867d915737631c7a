//! `ringctl topic create|list|describe|alter|delete`.

use ringmq_client::{Client, TopicInfo};
use serde_json::{json, Map, Value};

/// Parses `KEY=VALUE`.
pub fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub fn create(client: &Client, name: &str, partitions: u32, configs: &[(String, String)]) -> i32 {
    match client.admin().create_topic(name, partitions, configs) {
        Ok(()) => {
            println!("created topic {name} with {partitions} partitions");
            0
        }
        Err(e) => crate::fail(e),
    }
}

/// Grows a topic to `partitions` partitions (counts only grow). Prints
/// `altered topic NAME: N partitions` once every shard serves them.
pub fn alter(client: &Client, name: &str, partitions: u32) -> i32 {
    match client.admin().create_partitions(name, partitions) {
        Ok(()) => {
            println!("altered topic {name}: {partitions} partitions");
            0
        }
        Err(e) => crate::fail(e),
    }
}

pub fn delete(client: &Client, name: &str) -> i32 {
    match client.admin().delete_topic(name) {
        Ok(()) => {
            println!("deleted topic {name}");
            0
        }
        Err(e) => crate::fail(e),
    }
}

/// Plain: one topic name per line. JSON: an array of
/// `{name, partitions: N, configs: {..}}`.
pub fn list(client: &Client, json: bool) -> i32 {
    let topics = match client.admin().list_topics() {
        Ok(t) => t,
        Err(e) => return crate::fail(e),
    };
    if json {
        let items: Vec<Value> = topics
            .iter()
            .map(|t| json!({"name": t.name, "partitions": t.partitions.len(), "configs": configs_json(t)}))
            .collect();
        println!("{}", Value::Array(items));
    } else {
        for t in &topics {
            println!("{}", t.name);
        }
    }
    0
}

/// Plain: a `topic NAME partitions N` line, `config K=V` lines, then one
/// `partition P shard S endpoint HOST:PORT` line per partition.
pub fn describe(client: &Client, name: &str, json: bool) -> i32 {
    let topic = match client.admin().describe_topic(name) {
        Ok(t) => t,
        Err(e) => return crate::fail(e),
    };
    if json {
        println!("{}", describe_json(&topic));
    } else {
        println!("topic {} partitions {}", topic.name, topic.partitions.len());
        for (k, v) in &topic.configs {
            println!("config {k}={v}");
        }
        for p in &topic.partitions {
            println!(
                "partition {} shard {} endpoint {}",
                p.partition, p.shard, p.endpoint
            );
        }
    }
    0
}

fn configs_json(topic: &TopicInfo) -> Value {
    let map: Map<String, Value> = topic
        .configs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(map)
}

/// `{name, partitions: [{partition, shard, endpoint}], configs: {..}}`.
pub fn describe_json(topic: &TopicInfo) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| json!({"partition": p.partition, "shard": p.shard, "endpoint": p.endpoint}))
        .collect();
    json!({"name": topic.name, "partitions": partitions, "configs": configs_json(topic)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse() {
        assert_eq!(parse_config("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_config("k="), Ok(("k".into(), String::new())));
        assert!(parse_config("=v").is_err());
        assert!(parse_config("novalue").is_err());
    }
}
