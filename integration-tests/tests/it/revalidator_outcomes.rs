//! Every revalidation call is recorded in `SPOOL_OUTCOMES` (`spool.outcomes.<site>`) with
//! the call's trace: the events and paths/tags it covered, and how the target answered — a
//! failed attempt and the retry that succeeds each have their record.

use serde_json::Value;
use spool_integration_tests::receiver::{Reply, TestReceiver};
use spool_integration_tests::{eventually, read_range_json};

use crate::revalidator::{Setup, T};

#[tokio::test]
async fn each_call_leaves_a_record_of_its_events_and_answer() {
    // The first call fails (503), its retry succeeds.
    let target = TestReceiver::start([Reply::Status(503)]).await;
    let sys = Setup::start(serde_json::json!([target.target(None)])).await;
    let seq = sys.publish("m1", "blog").await;
    let calls = target.wait_seqs(&[seq], T).await;
    sys.wait_settled().await;
    let records: Vec<(Value, Option<String>)> = eventually("two records", T, || async {
        let records = read_range_json(&sys.nats.url(), "SPOOL_OUTCOMES").await;
        (records.len() >= 2).then_some(records)
    })
    .await;
    let ((failed, failed_trace), (ok, ok_trace)) = (&records[0], &records[1]);
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["status"], 503);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["status"], 200);
    for record in [failed, ok] {
        assert_eq!(record["site"], "acme");
        assert_eq!(record["seqs"], serde_json::json!([seq]));
        assert_eq!(
            record["paths"],
            serde_json::json!(["/blog/post-m1", "/blog"])
        );
        assert_eq!(
            record["webhook_id"], failed["webhook_id"],
            "one call, two attempts"
        );
        assert!(record["target"].as_str().unwrap().len() == 20);
    }
    assert_eq!(
        (failed["attempt"].as_u64(), ok["attempt"].as_u64()),
        (Some(1), Some(2))
    );
    // Each record carries the traceparent its call carried to the site.
    let sent: Vec<String> = calls
        .iter()
        .map(|c| c.header("traceparent").to_owned())
        .collect();
    for (record_trace, call_trace) in [failed_trace, ok_trace].into_iter().zip(&sent) {
        assert_eq!(record_trace.clone().unwrap_or_default(), *call_trace);
    }
}
