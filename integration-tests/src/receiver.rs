//! A real HTTP revalidation target on port 0 that records every call and answers with a
//! scripted sequence of statuses ("fail twice, then succeed"), or holds calls open.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use spool_proto::signing::SigningKey;

use crate::{eventually, TEST_SECRET};

/// One call the target received.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub raw: Bytes,
}

impl Call {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    /// The seqs of the events behind this call.
    pub fn seqs(&self) -> Vec<u64> {
        self.body["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
            .unwrap_or_default()
    }

    pub fn paths(&self) -> Vec<String> {
        self.body["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Verifies the Standard Webhooks signature with `secret`.
    pub fn signature_valid(&self, secret: &str) -> bool {
        let Ok(key) = SigningKey::from_secret(secret) else {
            return false;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        key.verify(
            self.headers.get("webhook-id").and_then(|v| v.to_str().ok()),
            self.headers
                .get("webhook-timestamp")
                .and_then(|v| v.to_str().ok()),
            self.headers
                .get("webhook-signature")
                .and_then(|v| v.to_str().ok()),
            &self.raw,
            now,
            300,
        )
        .is_ok()
    }
}

/// What the target answers next.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Never answers (until the caller gives up).
    Hang,
    /// Answers `200` after this long.
    Slow(std::time::Duration),
}

struct Inner {
    calls: Vec<Call>,
    script: VecDeque<Reply>,
    /// The answer once the script is used up.
    otherwise: Reply,
}

#[derive(Clone)]
pub struct TestReceiver {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl TestReceiver {
    /// Starts a target at `http://127.0.0.1:<port>/api/revalidate`; it answers 200 once its
    /// script is used up.
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> TestReceiver {
        let inner = Arc::new(Mutex::new(Inner {
            calls: Vec::new(),
            script: script.into_iter().collect(),
            otherwise: Reply::Status(200),
        }));
        let app = axum::Router::new()
            .route("/api/revalidate", axum::routing::post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("receiver port").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestReceiver {
            inner,
            url: format!("http://127.0.0.1:{port}/api/revalidate"),
            _server: Arc::new(server),
        }
    }

    /// What the target answers once its script is used up (200 unless set): a target that
    /// is down for good, then back.
    pub fn otherwise(&self, reply: Reply) {
        self.inner.lock().expect("receiver lock").otherwise = reply;
    }

    /// Appends to the script.
    pub fn then(&self, reply: Reply) {
        self.inner
            .lock()
            .expect("receiver lock")
            .script
            .push_back(reply);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().expect("receiver lock").calls.clone()
    }

    /// Waits until at least `n` calls arrived; returns them all.
    pub async fn wait_calls(&self, n: usize, within: Duration) -> Vec<Call> {
        eventually(&format!("{n} calls at {}", self.url), within, || async {
            let calls = self.calls();
            (calls.len() >= n).then_some(calls)
        })
        .await
    }

    /// Waits until the calls cover every seq of `seqs`; returns them all.
    pub async fn wait_seqs(&self, seqs: &[u64], within: Duration) -> Vec<Call> {
        eventually("every seq called", within, || async {
            let calls = self.calls();
            let seen: std::collections::HashSet<u64> =
                calls.iter().flat_map(|c| c.seqs()).collect();
            seqs.iter().all(|s| seen.contains(s)).then_some(calls)
        })
        .await
    }

    /// A revalidate target entry for a site JSON.
    pub fn target(&self, collections: Option<&[&str]>) -> serde_json::Value {
        let mut t = serde_json::json!({ "url": self.url, "secret": TEST_SECRET });
        if let Some(list) = collections {
            t["collections"] = serde_json::json!(list);
        }
        t
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let reply = {
        let mut inner = inner.lock().expect("receiver lock");
        inner.calls.push(Call {
            at: Instant::now(),
            headers,
            body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
            raw,
        });
        let otherwise = inner.otherwise.clone();
        inner.script.pop_front().unwrap_or(otherwise)
    };
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::OK)
            .into_response(),
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
        Reply::Slow(after) => {
            tokio::time::sleep(after).await;
            StatusCode::OK.into_response()
        }
    }
}
