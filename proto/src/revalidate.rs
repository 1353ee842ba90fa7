//! The body the revalidator posts to a site's revalidation webhook.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventType};
use crate::names::{CollectionName, SiteId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevalidateBody {
    /// Always `"revalidate"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub site: SiteId,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub events: Vec<RevalidatedEvent>,
}

/// One event behind a revalidation call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevalidatedEvent {
    pub seq: u64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub collection: CollectionName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
}

impl RevalidateBody {
    /// One call for several events of one site: the union of their paths and tags, each once,
    /// in the order the events came.
    pub fn merge<'a>(site: &SiteId, events: impl IntoIterator<Item = &'a Event>) -> RevalidateBody {
        let mut body = RevalidateBody {
            kind: "revalidate".into(),
            site: site.clone(),
            paths: Vec::new(),
            tags: Vec::new(),
            events: Vec::new(),
        };
        for e in events {
            for p in &e.paths {
                if !body.paths.contains(p) {
                    body.paths.push(p.clone());
                }
            }
            for t in &e.tags {
                if !body.tags.contains(t) {
                    body.tags.push(t.clone());
                }
            }
            body.events.push(RevalidatedEvent {
                seq: e.seq,
                id: e.id.clone(),
                kind: e.kind,
                collection: e.collection.clone(),
                slug: e.item.slug.clone(),
            });
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Item;
    use time::OffsetDateTime;

    fn event(seq: u64, slug: &str) -> Event {
        Event {
            seq,
            id: format!("msg_{seq}"),
            site: SiteId::parse("acme").unwrap(),
            kind: EventType::Updated,
            collection: CollectionName::parse("blog").unwrap(),
            audience: Default::default(),
            item: Item {
                id: seq.to_string(),
                slug: Some(slug.into()),
                extra: Default::default(),
            },
            paths: vec![format!("/blog/{slug}"), "/blog".into()],
            tags: vec!["blog".into(), format!("blog:{slug}")],
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            received_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn merge_unions_in_order() {
        let events = [event(1, "a"), event(2, "b")];
        let body = RevalidateBody::merge(&events[0].site, &events);
        assert_eq!(body.paths, ["/blog/a", "/blog", "/blog/b"]);
        assert_eq!(body.tags, ["blog", "blog:a", "blog:b"]);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["type"], "revalidate");
        assert_eq!(
            json["events"][1],
            serde_json::json!({"seq":2,"id":"msg_2","type":"content.updated","collection":"blog","slug":"b"})
        );
    }
}
