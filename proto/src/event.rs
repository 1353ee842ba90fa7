//! The webhook body the CMS sends and the content event Spool Live stores and delivers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::names::{CollectionName, SiteId};

/// Most paths or tags one webhook may carry on top of the mapped ones.
pub const MAX_EXTRA_ENTRIES: usize = 100;
/// Longest accepted path (bytes).
pub const MAX_PATH_LEN: usize = 1024;
/// Longest accepted tag, item id or slug (bytes); Next.js caps tags at 256.
pub const MAX_TOKEN_LEN: usize = 256;

/// What happened to the content item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "content.created")]
    Created,
    #[serde(rename = "content.updated")]
    Updated,
    #[serde(rename = "content.published")]
    Published,
    #[serde(rename = "content.unpublished")]
    Unpublished,
    #[serde(rename = "content.deleted")]
    Deleted,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Created,
        EventType::Updated,
        EventType::Published,
        EventType::Unpublished,
        EventType::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "content.created",
            EventType::Updated => "content.updated",
            EventType::Published => "content.published",
            EventType::Unpublished => "content.unpublished",
            EventType::Deleted => "content.deleted",
        }
    }
}

/// Who may see an event: every reader of the site (`public`, what visitors see), or only
/// readers with preview rights (`preview`: drafts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// Events stored before audiences existed are public, as they were delivered then.
    #[default]
    Public,
    Preview,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Public => "public",
            Audience::Preview => "preview",
        }
    }
}

/// The content item: `id` (required), `slug` (optional), and whatever else the CMS sends,
/// which is passed through untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sites/{site}/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Unknown fields are ignored, so the CMS can add fields without breaking delivery.
pub struct WebhookPayload {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub collection: CollectionName,
    pub item: Item,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub occurred_at: Option<OffsetDateTime>,
    /// The CMS's own word on who may see the event; absent = the site's `public_types` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
}

/// Why a webhook body was refused; the message is meant for the CMS developer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

impl WebhookPayload {
    /// Parses and validates a webhook body. Every refusal says which field is wrong and why.
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        let payload: WebhookPayload = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => PayloadError(format!("invalid webhook body: {}", e.inner())),
                _ => PayloadError(format!("invalid webhook body: {path}: {}", e.inner())),
            }
        })?;
        payload.validate()?;
        Ok(payload)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        check_token("item.id", &self.item.id)?;
        if let Some(slug) = &self.item.slug {
            check_token("item.slug", slug)?;
            if slug.contains(['?', '#']) || slug.split('/').any(|seg| seg == "..") {
                return Err(PayloadError(format!(
                    "item.slug {slug:?} must not contain '?', '#' or a '..' segment"
                )));
            }
        }
        check_list("paths", &self.paths, check_path)?;
        check_list("tags", &self.tags, check_token)?;
        Ok(())
    }
}

fn check_list(
    field: &str,
    values: &[String],
    check: impl Fn(&str, &str) -> Result<(), PayloadError>,
) -> Result<(), PayloadError> {
    if values.len() > MAX_EXTRA_ENTRIES {
        return Err(PayloadError(format!(
            "{field} has {} entries; at most {MAX_EXTRA_ENTRIES} are accepted",
            values.len()
        )));
    }
    values
        .iter()
        .enumerate()
        .try_for_each(|(i, v)| check(&format!("{field}[{i}]"), v))
}

/// A non-empty, printable, bounded string (ids, slugs, tags).
pub fn check_token(field: &str, value: &str) -> Result<(), PayloadError> {
    if value.is_empty() {
        return Err(PayloadError(format!("{field} must not be empty")));
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(PayloadError(format!(
            "{field} is {} bytes long; at most {MAX_TOKEN_LEN} are accepted",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(PayloadError(format!(
            "{field} {value:?} must not contain whitespace or control characters"
        )));
    }
    Ok(())
}

/// A site-relative URL path: starts with '/', bounded, no whitespace or control characters.
pub fn check_path(field: &str, value: &str) -> Result<(), PayloadError> {
    if !value.starts_with('/') || value.starts_with("//") {
        return Err(PayloadError(format!(
            "{field} {value:?} must be a path starting with a single '/'"
        )));
    }
    if value.len() > MAX_PATH_LEN {
        return Err(PayloadError(format!(
            "{field} is {} bytes long; at most {MAX_PATH_LEN} are accepted",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(PayloadError(format!(
            "{field} {value:?} must not contain whitespace or control characters"
        )));
    }
    Ok(())
}

/// A content event as stored in `SPOOL_EVENTS` and delivered everywhere (SSE, poll,
/// revalidation). `seq` is the stream sequence: it is not part of the stored message (the
/// sequence is only known once JetStream stored it) and is filled in on every read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// The CMS's `webhook-id`.
    pub id: String,
    pub site: SiteId,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub collection: CollectionName,
    /// Who may see it (see [`Audience`]).
    #[serde(default)]
    pub audience: Audience,
    pub item: Item,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WebhookPayload, PayloadError> {
        WebhookPayload::parse(json.as_bytes())
    }

    #[test]
    fn parses_the_contract_example() {
        let p = parse(
            r#"{ "type": "content.published", "collection": "blog",
                 "item": { "id": "42", "slug": "my-post", "title": "My post" },
                 "paths": ["/extra/path"], "tags": ["extra-tag"],
                 "occurred_at": "2026-11-25T10:00:00Z" }"#,
        )
        .unwrap();
        assert_eq!(p.kind, EventType::Published);
        assert_eq!(p.item.slug.as_deref(), Some("my-post"));
        assert_eq!(p.item.extra["title"], "My post");
        assert!(p.occurred_at.is_some());
    }

    #[test]
    fn minimal_body_is_enough() {
        let p =
            parse(r#"{"type":"content.deleted","collection":"blog","item":{"id":"1"}}"#).unwrap();
        assert!(p.paths.is_empty() && p.tags.is_empty() && p.occurred_at.is_none());
    }

    #[test]
    fn every_type_round_trips() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("{", "EOF"),
            (
                r#"{"type":"content.moved","collection":"blog","item":{"id":"1"}}"#,
                "unknown variant `content.moved`",
            ),
            (
                r#"{"type":"content.created","item":{"id":"1"}}"#,
                "missing field `collection`",
            ),
            (
                r#"{"type":"content.created","collection":"Blog","item":{"id":"1"}}"#,
                "invalid collection name \"Blog\"",
            ),
            (
                r#"{"type":"content.created","collection":"blog"}"#,
                "missing field `item`",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"slug":"a"}}"#,
                "missing field `id`",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":""}}"#,
                "item.id must not be empty",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":"1","slug":"a b"}}"#,
                "item.slug \"a b\" must not contain whitespace",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":"1","slug":"../x"}}"#,
                "'..' segment",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":"1"},"paths":["x"]}"#,
                "paths[0] \"x\" must be a path",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":"1"},"tags":["ok",""]}"#,
                "tags[1] must not be empty",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":"1"},"occurred_at":"yesterday"}"#,
                "occurred_at: ",
            ),
            (
                r#"{"type":"content.created","collection":"blog","item":{"id":1}}"#,
                "invalid type: integer `1`, expected a string",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err} (wanted {want})");
        }
    }

    #[test]
    fn too_many_paths_is_refused() {
        let paths: Vec<String> = (0..=MAX_EXTRA_ENTRIES).map(|i| format!("/p/{i}")).collect();
        let body = serde_json::json!({"type":"content.created","collection":"blog","item":{"id":"1"},"paths":paths});
        let err = parse(&body.to_string()).unwrap_err().to_string();
        assert!(err.contains("at most 100"), "{err}");
    }

    #[test]
    fn stored_event_has_no_seq_and_delivered_one_has() {
        let mut e = Event {
            seq: 0,
            id: "msg_1".into(),
            site: SiteId::parse("acme").unwrap(),
            kind: EventType::Published,
            collection: CollectionName::parse("blog").unwrap(),
            audience: Default::default(),
            item: Item {
                id: "42".into(),
                slug: None,
                extra: Map::new(),
            },
            paths: vec!["/blog".into()],
            tags: vec!["blog".into()],
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        let stored = serde_json::to_value(&e).unwrap();
        assert!(stored.get("seq").is_none());
        e.seq = 7;
        let delivered = serde_json::to_value(&e).unwrap();
        assert_eq!(delivered["seq"], 7);
        assert_eq!(delivered["type"], "content.published");
        assert_eq!(delivered["occurred_at"], "1970-01-01T00:00:00Z");
        let back: Event = serde_json::from_value(delivered).unwrap();
        assert_eq!(back, e);
    }
}
