//! A CMS stand-in: signs webhooks per Standard Webhooks and sends them.

use spool_proto::signing::SigningKey;

use crate::TEST_SECRET;

/// A webhook to send: the body plus the headers that sign it.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub id: String,
    pub timestamp: i64,
    pub body: Vec<u8>,
    pub secret: String,
}

impl Webhook {
    /// A `content.published` of item `item` in `collection`, signed with the test secret now.
    pub fn published(id: &str, collection: &str, item: &str) -> Webhook {
        let body = serde_json::json!({
            "type": "content.published",
            "collection": collection,
            "item": { "id": item, "slug": format!("post-{item}"), "title": format!("Post {item}") },
            "occurred_at": "2026-11-25T10:00:00Z"
        });
        Webhook::with_body(id, body.to_string().into_bytes())
    }

    pub fn with_body(id: &str, body: Vec<u8>) -> Webhook {
        Webhook {
            id: id.into(),
            timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
            body,
            secret: TEST_SECRET.into(),
        }
    }

    pub fn signature(&self) -> String {
        SigningKey::from_secret(&self.secret)
            .expect("test secret")
            .sign(&self.id, self.timestamp, &self.body)
    }

    /// The signed request, ready to send or to alter.
    pub fn request(
        &self,
        http: &reqwest::Client,
        base_url: &str,
        site: &str,
    ) -> reqwest::RequestBuilder {
        http.post(format!("{base_url}/v1/sites/{site}/webhooks"))
            .header("content-type", "application/json")
            .header("webhook-id", &self.id)
            .header("webhook-timestamp", self.timestamp.to_string())
            .header("webhook-signature", self.signature())
            .body(self.body.clone())
    }

    pub async fn send(
        &self,
        http: &reqwest::Client,
        base_url: &str,
        site: &str,
    ) -> (u16, serde_json::Value) {
        let r = self
            .request(http, base_url, site)
            .send()
            .await
            .expect("webhook request");
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

impl Webhook {
    /// Sends until the ingest stores it — a 503 is retried with the same id after a short
    /// pause, as a CMS does — and returns its seq. Panics after 50 tries.
    pub async fn send_until_stored(
        &self,
        http: &reqwest::Client,
        base_url: &str,
        site: &str,
    ) -> u64 {
        for _ in 0..50 {
            let (status, body) = self.send(http, base_url, site).await;
            if status == 202 || status == 200 {
                return body["seq"].as_u64().unwrap_or(0);
            }
            // The CMS's retry delay: the behaviour this stands in for, not a readiness wait.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "webhook {} to {site} was not stored after 50 tries",
            self.id
        );
    }
}
