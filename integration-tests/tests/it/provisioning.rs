//! Streams and bucket are provisioned from configuration, idempotently; the sites file is
//! applied at start-up.

use std::time::Duration;

use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{ingest_config, TestIngest};
use spool_integration_tests::site_json;
use spool_integration_tests::webhook::Webhook;

#[tokio::test]
async fn streams_follow_configuration_and_a_second_start_changes_nothing_else() {
    let nats = NatsServer::start().await;
    let mut config = ingest_config(&nats.url());
    config.common.streams.max_age = Duration::from_secs(3600);
    config.common.streams.duplicate_window = Duration::from_secs(120);
    let first = TestIngest::start(config.clone()).await;
    first.put_site(&site_json("acme")).await;
    assert_eq!(
        Webhook::published("m1", "blog", "1")
            .send(&first.http, &first.base_url, "acme")
            .await
            .0,
        202
    );
    // A second instance with a new retention updates the stream in place; events stay.
    config.common.streams.max_age = Duration::from_secs(7200);
    let second = TestIngest::start(config).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut events = js.get_stream("SPOOL_EVENTS").await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.subjects, ["spool.events.>"]);
    assert_eq!(info.config.max_age, Duration::from_secs(7200));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(info.state.messages, 1);
    let mut dlq = js.get_stream("SPOOL_DLQ").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().config.subjects, ["spool.dlq.>"]);
    js.get_key_value("spool-sites").await.unwrap();
    assert_eq!(
        Webhook::published("m2", "blog", "2")
            .send(&second.http, &second.base_url, "acme")
            .await
            .0,
        202
    );
}

#[tokio::test]
async fn the_sites_file_is_applied_at_start_up_and_a_bad_one_fails_start_up() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sites.yaml");
    let yaml = serde_yaml::to_string(&vec![site_json("fromfile")]).unwrap();
    std::fs::write(&file, yaml).unwrap();
    let mut config = ingest_config(&nats.url());
    config.common.sites_file = Some(file.clone());
    let ingest = TestIngest::start(config.clone()).await;
    assert_eq!(
        Webhook::published("m", "blog", "1")
            .send(&ingest.http, &ingest.base_url, "fromfile")
            .await
            .0,
        202
    );

    std::fs::write(&file, r#"[{"id": "Bad Site"}]"#).unwrap();
    let err = spool_ingest::Application::build(config, Default::default())
        .await
        .err()
        .expect("a bad sites file fails start-up");
    let text = format!("{err:#}");
    assert!(
        text.contains("site #0") && text.contains("invalid site id"),
        "{text}"
    );
}
