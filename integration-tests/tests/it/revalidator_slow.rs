//! A slow target: events queued behind its calls (for a coalescing window or a call slot)
//! stay with the replica that holds them: no redelivery meanwhile, and the wait is no attempt.

use std::time::Duration;

use spool_integration_tests::receiver::{Reply, TestReceiver};

use crate::revalidator::{Setup, T};

#[tokio::test]
async fn an_event_queued_behind_a_slow_call_is_called_once() {
    // One call at a time; the first call hangs until the 3 s call timeout, three times the
    // ack wait. The event published meanwhile waits for the slot.
    let target = TestReceiver::start([Reply::Hang]).await;
    let setup = Setup::start_with(serde_json::json!([target.target(None)]), |c| {
        c.target_concurrency = 1;
        c.ack_wait = Duration::from_secs(1);
        c.call_timeout = Duration::from_secs(3);
    })
    .await;
    let slow = setup.publish("msg_slow", "blog").await;
    target.wait_calls(1, T).await;
    let queued = setup.publish("msg_queued", "blog").await;
    target.wait_seqs(&[slow, queued], T).await;
    setup.wait_settled().await;

    let calls = target.calls();
    let per_call: Vec<Vec<u64>> = calls.iter().map(|c| c.seqs()).collect();
    println!("calls (seqs): {per_call:?}");
    let queued_calls = per_call.iter().filter(|s| s.contains(&queued)).count();
    assert_eq!(
        queued_calls, 1,
        "the queued event was called {queued_calls} times: {per_call:?}"
    );
    assert!(setup.dead_letters().await.1.is_empty());
}

#[tokio::test]
async fn a_failing_event_queued_behind_a_slow_call_is_dead_lettered_after_its_schedule() {
    // As above, but the target answers 500 after the hanging call. The target is paused
    // after each failure and probed with one call at a time; a retry that comes due while
    // it is paused counts as an attempt (the probe stands for it). So the queued event is
    // called at least once, never earlier than its schedule allows, and dead-lettered
    // after the schedule's 4 attempts.
    let target = TestReceiver::start(
        std::iter::once(Reply::Hang).chain(std::iter::repeat_n(Reply::Status(500), 20)),
    )
    .await;
    let setup = Setup::start_with(serde_json::json!([target.target(None)]), |c| {
        c.target_concurrency = 1;
        c.ack_wait = Duration::from_secs(1);
        c.call_timeout = Duration::from_millis(3500);
    })
    .await;
    let slow = setup.publish("msg_slow", "blog").await;
    target.wait_calls(1, T).await;
    let queued = setup.publish("msg_queued", "blog").await;
    target.wait_seqs(&[slow, queued], T).await;
    setup.wait_settled().await;

    let calls = target.calls();
    let per_call: Vec<Vec<u64>> = calls.iter().map(|c| c.seqs()).collect();
    println!("calls (seqs): {per_call:?}");
    let queued_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.seqs().contains(&queued))
        .collect();
    assert!(
        !queued_calls.is_empty() && queued_calls.len() <= 4,
        "{per_call:?}"
    );
    let gaps: Vec<Duration> = queued_calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    for gap in &gaps {
        assert!(*gap >= Duration::from_millis(80), "gaps {gaps:?}");
    }
    let (text, records) = setup.dead_letters().await;
    for seq in [slow, queued] {
        let record = records
            .iter()
            .find(|r| r["event"]["seq"] == seq)
            .unwrap_or_else(|| panic!("no dead letter for {seq}: {text}"));
        assert_eq!(record["attempts"], 4, "{record}");
        assert_eq!(record["reason"], "retries_exhausted", "{record}");
    }
}
