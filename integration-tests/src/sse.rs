//! An SSE client for tests, parsing with `eventsource-stream` (no hand-rolled parser).

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};

pub use eventsource_stream::Event;

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: Events,
}

/// A content event as the client received it: the SSE `id` and the JSON `data`.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: u64,
    pub data: serde_json::Value,
}

impl SseClient {
    /// Opens `GET {url}` with `Accept: text/event-stream` (and `Last-Event-ID` if given).
    pub async fn connect(
        request: reqwest::RequestBuilder,
        last_event_id: Option<u64>,
    ) -> SseClient {
        let mut request = request.header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("SSE request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        SseClient {
            status,
            headers,
            events,
        }
    }

    /// The next SSE event of any type; `None` when the stream ended. Panics after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no SSE event within {timeout:?}"),
        }
    }

    /// The next content event (default `message` type), skipping `ready` and `position`;
    /// panics on a `reset` (use [`SseClient::next_event`] where one is expected).
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Received> {
        loop {
            let event = self.next_event(timeout).await?;
            match event.event.as_str() {
                "message" => {
                    return Some(Received {
                        id: event.id.parse().expect("numeric id"),
                        data: serde_json::from_str(&event.data).expect("JSON data"),
                    })
                }
                "ready" | "position" => continue,
                other => panic!("unexpected SSE event {other}: {}", event.data),
            }
        }
    }
}
