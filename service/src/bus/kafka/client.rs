//! librdkafka clients from the section: the producer (predictions, dead letters), the group
//! consumer (input), and topic creation.
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use super::KafkaConfig;
use super::handover::{GroupConsumer, HandOver};

/// The brokers and the security properties, the start of every client's config.
pub fn base(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.security {
        c.set(k, v);
    }
    c
}

pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    base(cfg)
        .set("client.id", "augur")
        .set(
            "enable.idempotence",
            if cfg.idempotent_producer { "true" } else { "false" },
        )
        .set("acks", "all")
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
        .create()
}

/// The group consumer of the input topic. Offsets are committed by the ingress (input
/// offsets and predicted-up-to marks together), never automatically; the cooperative-sticky
/// assignor moves only the partitions that change owner in a rebalance.
pub fn consumer(cfg: &KafkaConfig, hand_over: HandOver) -> Result<GroupConsumer, rdkafka::error::KafkaError> {
    let mut c = base(cfg);
    if !cfg.instance_id.is_empty() {
        c.set("group.instance.id", &cfg.instance_id);
    }
    if !cfg.debug.is_empty() {
        c.set("debug", &cfg.debug);
    }
    c.set("client.id", "augur")
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", &cfg.assignment_strategy)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", cfg.max_poll_interval_ms.to_string())
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create_with_context(hand_over)
}

/// Creates the topics, retrying while the broker is unreachable, until done or `stop`.
pub async fn ensure_topics(cfg: KafkaConfig, mut stop: watch::Receiver<bool>) {
    let admin: AdminClient<DefaultClientContext> = match base(&cfg).create() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "kafka admin client");
            return;
        }
    };
    let mut names = vec![
        cfg.input_topic.clone(),
        cfg.output_topic.clone(),
        cfg.dlq_topic.clone(),
        cfg.marks_topic.clone(),
    ];
    for t in [&cfg.members_topic, &cfg.outcomes_topic, &cfg.shadow_topic] {
        if !t.is_empty() {
            names.push(t.clone());
        }
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    loop {
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, cfg.partitions, TopicReplication::Fixed(1)))
            .collect();
        // Raced against the stop: against a broker that never answers, a creation request
        // waits out librdkafka's request timeout (a minute), which a shutdown must not.
        let created = tokio::select! {
            r = admin.create_topics(&topics, &opts) => r,
            _ = stop.changed() => return,
        };
        match created {
            Ok(results) => {
                let failed: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(_) => None,
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => None,
                        Err((topic, code)) => Some(format!("{topic}: {code}")),
                    })
                    .collect();
                if failed.is_empty() {
                    tracing::info!(topics = ?names, "kafka topics ready");
                    return;
                }
                tracing::warn!(?failed, "kafka topics not created; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "kafka unreachable for topic creation; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_client_carries_the_security_properties() {
        let mut cfg = KafkaConfig::default();
        cfg.security.insert("security.protocol".into(), "SASL_SSL".into());
        cfg.security
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        let c = base(&cfg);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("bootstrap.servers"), Some(cfg.brokers.as_str()));
        cfg.security.insert("acks".into(), "0".into());
        assert!(
            cfg.problems()
                .iter()
                .any(|p| p.contains("\"acks\" is not a security property"))
        );
    }
}
