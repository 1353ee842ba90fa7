//! A setting a service can't work with stops it at start-up, with a message naming it —
//! never a panic later, in the middle of serving.

use std::process::Stdio;
use std::time::Duration;

use spool_integration_tests::process::{spawn_tied, tied_command};
use spool_integration_tests::service_binary;

/// Runs `service` with `env`; its exit status and what it wrote to stderr.
async fn start_with(service: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = tied_command(service_binary(service));
    command
        .envs(env.iter().copied())
        .env("SPOOL_LISTEN", "127.0.0.1:0")
        // No NATS is needed to refuse a setting: nothing listens here.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = spawn_tied(command).expect("spawn");
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the service exits at once")
    .expect("join")
    .expect("output");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_settings_stop_each_service_with_a_message_naming_them() {
    /// A service, the settings it is started with, and what its message must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 13] = [
        (
            "spool-delivery",
            &[("SPOOL_HEARTBEAT", "0s")],
            "SPOOL_HEARTBEAT",
        ),
        (
            "spool-delivery",
            &[("SPOOL_REPLAY_WINDOW", "0")],
            "SPOOL_REPLAY_WINDOW",
        ),
        (
            "spool-ingest",
            &[("SPOOL_HEADER_TIMEOUT", "0s")],
            "SPOOL_HEADER_TIMEOUT",
        ),
        (
            "spool-revalidator",
            &[("SPOOL_TARGET_MAX_HELD", "10")],
            "SPOOL_TARGET_MAX_HELD (10) must be at least SPOOL_COALESCE_MAX (500)",
        ),
        (
            "spool-revalidator",
            &[("SPOOL_ACK_WAIT", "0s")],
            "SPOOL_ACK_WAIT",
        ),
        (
            "spool-ingest",
            &[("SPOOL_WEBHOOK_RATE", "0")],
            "SPOOL_WEBHOOK_RATE",
        ),
        (
            "spool-ingest",
            &[("SPOOL_BODY_TIMEOUT", "0s")],
            "SPOOL_BODY_TIMEOUT",
        ),
        (
            "spool-delivery",
            &[
                ("SPOOL_HISTORY_READS", "2"),
                ("SPOOL_HISTORY_READS_PER_SITE", "3"),
            ],
            "SPOOL_HISTORY_READS_PER_SITE must be between 1 and SPOOL_HISTORY_READS",
        ),
        (
            "spool-delivery",
            &[("SPOOL_MAX_STREAM_LIFETIME", "1s")],
            "SPOOL_MAX_STREAM_LIFETIME",
        ),
        (
            "spool-delivery",
            &[("SPOOL_MAX_STREAMS_PER_SITE", "0")],
            "SPOOL_MAX_STREAMS_PER_SITE",
        ),
        (
            "spool-ingest",
            &[("SPOOL_WEBHOOK_BURST", "0")],
            "SPOOL_WEBHOOK_BURST",
        ),
        (
            "spool-delivery",
            &[("SPOOL_REQUESTS_PER_IP_RATE", "0")],
            "SPOOL_REQUESTS_PER_IP_RATE",
        ),
        (
            "spool-revalidator",
            &[
                ("SPOOL_MAX_CONNECTIONS_PER_IP", "0"),
                ("SPOOL_REQUESTS_PER_IP_BURST", "0"),
            ],
            "SPOOL_MAX_CONNECTIONS_PER_IP must be at least 1; SPOOL_REQUESTS_PER_IP_BURST",
        ),
    ];
    for (service, env, named) in cases {
        let (status, stderr) = start_with(service, env).await;
        assert!(!status.success(), "{service} {env:?} started");
        assert!(
            stderr.contains("invalid configuration"),
            "{service} {env:?}: {stderr}"
        );
        assert!(stderr.contains(named), "{service} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{service} {env:?}: {stderr}");
    }
}
