//! Cluster faults (issue #16): the three services on a 3-node JetStream cluster of real
//! `nats-server` processes, every stream and bucket R3, `NATS_URL` listing the three nodes.
//! While a CMS writes webhooks (retrying `5xx` and unanswered requests with the same id),
//! an SSE reader and a long-poll reader follow the site and the revalidator calls a target,
//! the nodes are killed, restarted and paused; afterwards every webhook answered `2xx` was
//! delivered to each reader exactly once and in order, and revalidated at least once.
//!
//! Run with `-- --nocapture` for the figures (`FAULTS | ...` lines, as in results/faults.md).

use std::time::{Duration, Instant};

use spool_integration_tests::faults::{self, BaseUrl, Follower, Writer};
use spool_integration_tests::nats_cluster::NatsCluster;
use spool_integration_tests::process::ServiceProcess;
use spool_integration_tests::receiver::TestReceiver;
use spool_integration_tests::{eventually, site_json, write_sites_file, LOOPBACK_TARGET_NETWORKS};
use spool_proto::names::{
    DLQ_STREAM, EVENTS_STREAM, OUTCOMES_STREAM, RETRY_STREAM, SITES_BUCKET, TARGETS_BUCKET,
};

const SITE: &str = "acme";
/// The revalidator's durable consumer of `SPOOL_EVENTS` (`SPOOL_CONSUMER_NAME`'s default).
const CONSUMER: &str = "spool-revalidator";
const TOKEN: &str = "rk_test_acme_0123456789";
/// Longest a step may take: an election (4 to 9 s in nats-server), a node catching up, the
/// clients moving to another node.
const STEP: Duration = Duration::from_secs(60);
/// Webhooks acknowledged after each fault before the next: the system takes writes again.
const PROGRESS: usize = 20;

fn log(started: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_loses_and_duplicates_nothing_through_leader_follower_and_meta_leader_kills_and_a_paused_node(
) {
    let started = Instant::now();
    let mut cluster = NatsCluster::start().await;
    let urls = cluster.urls();
    log(started, &format!("cluster up: {urls}"));

    // The real binaries, configured as an operator would: NATS_URL lists the three nodes,
    // every stream and bucket R3.
    let target = TestReceiver::start([]).await;
    let mut site = site_json(SITE);
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let dir = tempfile::tempdir().unwrap();
    let sites = write_sites_file(dir.path(), &[site]);
    let env = [
        ("NATS_URL", urls.clone()),
        ("SPOOL_STREAM_REPLICAS", "3".to_string()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
        // Redeliveries and retries in seconds, not minutes.
        ("SPOOL_ACK_WAIT", "5s".to_string()),
        ("SPOOL_CALL_TIMEOUT", "5s".to_string()),
        (
            "SPOOL_RETRY_SCHEDULE",
            "200ms,500ms,1s,2s,2s,2s,2s,2s,2s,2s".to_string(),
        ),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let delivery = ServiceProcess::start("spool-delivery", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    for stream in [
        EVENTS_STREAM,
        DLQ_STREAM,
        RETRY_STREAM,
        OUTCOMES_STREAM,
        &format!("KV_{SITES_BUCKET}"),
        &format!("KV_{TARGETS_BUCKET}"),
    ] {
        assert_eq!(cluster.stream_replicas(stream).await, 3, "{stream}");
    }

    let http = reqwest::Client::new();
    let readers = [
        Follower::sse(&http, &BaseUrl::new(&delivery.base_url), SITE, TOKEN),
        Follower::poll(&http, &BaseUrl::new(&delivery.base_url), SITE, TOKEN),
    ];
    let writer = Writer::start(
        &http,
        &BaseUrl::new(&ingest.base_url),
        SITE,
        "c",
        2,
        Duration::from_millis(20),
    );
    writer.wait_progress(PROGRESS, STEP).await;
    log(
        started,
        &format!("{} acknowledged before any fault", writer.acked()),
    );

    // The stream leader — made the node the delivery is connected to, so that its feed
    // loses both its connection and the leader — then a follower: with two of three nodes
    // gone there is no quorum and nothing can be acknowledged until one is back.
    let leader = cluster.node_of_client("spool-delivery").await;
    cluster.move_stream_leader(EVENTS_STREAM, &leader).await;
    cluster.kill9(&leader).await;
    log(started, &format!("SIGKILL stream leader {leader}"));
    writer.wait_progress(PROGRESS, STEP).await;
    let new_leader = cluster.stream_leader(EVENTS_STREAM).await;
    log(
        started,
        &format!(
            "{} acknowledged; new stream leader {new_leader}",
            writer.acked()
        ),
    );
    let follower = cluster
        .running()
        .into_iter()
        .find(|n| *n != new_leader)
        .expect("a follower");
    cluster.kill9(&follower).await;
    log(started, &format!("SIGKILL follower {follower}: no quorum"));
    writer.wait_failures(2, STEP).await;
    cluster.restart(&leader).await;
    cluster.restart(&follower).await;
    log(started, &format!("restarted {leader} and {follower}"));
    writer.wait_progress(PROGRESS, STEP).await;
    log(started, &format!("{} acknowledged", writer.acked()));

    // The meta leader.
    let meta = cluster.meta_leader().await;
    cluster.kill9(&meta).await;
    log(started, &format!("SIGKILL meta leader {meta}"));
    writer.wait_progress(PROGRESS, STEP).await;
    cluster.restart(&meta).await;
    log(
        started,
        &format!("{} acknowledged; restarted {meta}", writer.acked()),
    );
    writer.wait_progress(PROGRESS, STEP).await;

    // A node paused past the election timeout: the one the ingest is connected to, made
    // the leader of the stream and of the revalidator's consumer first. The others elect
    // new leaders; the ingest must notice that its node no longer answers and move to
    // another, and the revalidator that its pull request went with the old leader.
    let leader = cluster.node_of_client("spool-ingest").await;
    cluster.move_stream_leader(EVENTS_STREAM, &leader).await;
    cluster
        .move_consumer_leader(EVENTS_STREAM, CONSUMER, &leader)
        .await;
    cluster.pause(&leader);
    let paused = std::time::Instant::now();
    log(
        started,
        &format!("SIGSTOP {leader}, leader of the stream and the revalidator's consumer"),
    );
    let new_leader = cluster
        .stream_leader_other_than(EVENTS_STREAM, Some(&leader))
        .await;
    let new_consumer_leader = cluster
        .consumer_leader_other_than(EVENTS_STREAM, CONSUMER, Some(&leader))
        .await;
    log(
        started,
        &format!("new leaders: stream {new_leader}, consumer {new_consumer_leader}"),
    );
    writer.wait_progress(PROGRESS, STEP).await;
    // Revalidation goes on while the node is still paused (it needs neither the node nor
    // its old leaderships).
    let acked_now = writer.acked();
    let since = std::time::Instant::now();
    let next_call = eventually(
        "a revalidation call while the node is paused",
        STEP,
        || async {
            target
                .calls()
                .into_iter()
                .find(|c| c.at > since)
                .map(|c| c.at)
        },
    )
    .await;
    log(
        started,
        &format!(
            "{acked_now} acknowledged; revalidation goes on while {leader} is paused \
             (the first call after writes resumed came {:.1}s after the pause)",
            next_call.duration_since(paused).as_secs_f64()
        ),
    );
    cluster.resume(&leader).await;
    log(started, &format!("SIGCONT {leader}"));
    writer.wait_progress(PROGRESS, STEP).await;

    let written = writer.stop().await;
    let acked = written.acked();
    let last_seq = acked.values().copied().max().expect("some acknowledged");
    faults::wait_followers(&readers, last_seq, STEP).await;
    log(started, "readers caught up");
    let seqs: Vec<u64> = acked.values().copied().collect();
    let calls = target.wait_seqs(&seqs, STEP).await;
    log(started, "every event revalidated");

    let node = cluster.running().pop().expect("a running node");
    let stored = faults::stored(
        &faults::stored_events(&cluster.url(&node), SITE).await,
        &acked,
    );
    let mut delivered = Vec::new();
    for reader in readers {
        let followed = reader.stop().await;
        delivered.push((
            format!("{} (reconnects {})", followed.kind, followed.reconnects),
            faults::delivered(&followed.got, &acked),
        ));
    }
    let revalidated = faults::revalidated(&calls, &acked);
    faults::report(
        "3-node R3 cluster: SIGKILL stream leader (the delivery's node), then a follower (no quorum), restart both; SIGKILL + restart meta leader; SIGSTOP the ingest's node, leading the stream and the revalidator's consumer, past the election, SIGCONT",
        &written,
        stored,
        &delivered,
    );
    println!("  revalidated {revalidated:?} ({} calls)", calls.len());
    log(started, "done");

    assert_eq!(
        written.acked().len(),
        written.written(),
        "a webhook was never acknowledged"
    );
    assert_eq!(stored.lost, 0, "{stored:?}");
    assert_eq!(stored.duplicated, 0, "{stored:?}");
    for (name, d) in &delivered {
        assert_eq!(d.lost, 0, "{name}: {d:?}");
        assert_eq!(d.duplicated, 0, "{name}: {d:?}");
        assert_eq!(d.out_of_order, 0, "{name}: {d:?}");
        assert_eq!(d.wrong_seq, 0, "{name}: {d:?}");
    }
    assert_eq!(revalidated.missing, 0, "{revalidated:?}");
}
