//! `event: revalidated`: a revalidation target answered `2xx`, so these paths and tags of
//! the site are fresh now, and a page can refetch exactly what changed.
//!
//! An outcome covers a batch of events, and a target may be sent drafts too (its `types`):
//! each reader is told only of the events it may see (audience and collections), and only
//! of their paths and tags, so a visitor never learns a draft's path.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use spool_proto::outcome::CallOutcome;
use spool_proto::Audience;

use crate::frames::FeedEvent;
use crate::window::Filter;

/// One target's `2xx` for some of a site's events, as this replica's feed knows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Revalidated {
    target: String,
    at: String,
    covered: Vec<Covered>,
    /// The frames of readers of every collection — visitors, and preview readers — built
    /// by the first of them and shared by the rest (most readers filter nothing).
    unfiltered: [OnceLock<Option<Bytes>>; 2],
}

/// One event the call covered: who may see it, and its paths and tags the call revalidated.
#[derive(Debug, Clone, PartialEq)]
struct Covered {
    seq: u64,
    collection: String,
    audience: Audience,
    paths: Vec<String>,
    tags: Vec<String>,
}

#[derive(Serialize)]
struct Data<'a> {
    target: &'a str,
    seqs: Vec<u64>,
    paths: Vec<&'a str>,
    tags: Vec<&'a str>,
    at: &'a str,
}

impl Revalidated {
    /// The notice for `outcome`, given the events it covered that the feed has seen; `None`
    /// when the call wasn't a `2xx` or revalidated no path or tag of them.
    pub fn new<'a>(
        outcome: &CallOutcome,
        events: impl IntoIterator<Item = &'a FeedEvent>,
    ) -> Option<Revalidated> {
        if !outcome.ok {
            return None;
        }
        let covered: Vec<Covered> = events
            .into_iter()
            .filter(|event| outcome.seqs.contains(&event.seq))
            .map(|event| {
                let (paths, tags) = event.paths_and_tags();
                Covered {
                    seq: event.seq,
                    collection: event.collection.clone(),
                    audience: event.audience,
                    paths: paths
                        .into_iter()
                        .filter(|p| outcome.paths.contains(p))
                        .collect(),
                    tags: tags
                        .into_iter()
                        .filter(|t| outcome.tags.contains(t))
                        .collect(),
                }
            })
            // An event whose paths and tags the call didn't revalidate has nothing to tell.
            .filter(|c| !c.paths.is_empty() || !c.tags.is_empty())
            .collect();
        let at = outcome
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        (!covered.is_empty()).then(|| Revalidated {
            target: outcome.target.clone(),
            at,
            covered,
            unfiltered: Default::default(),
        })
    }

    /// The last event the notice covers: it goes out after that event.
    pub fn last_seq(&self) -> u64 {
        self.covered.iter().map(|c| c.seq).max().unwrap_or(0)
    }

    /// The frame for a reader with `filter`: only the events it may see, and their paths and
    /// tags, each once; `None` when it may see none of them.
    pub fn frame(&self, filter: &Filter) -> Option<Bytes> {
        if filter.collections.is_some() {
            return self.encode(filter);
        }
        self.unfiltered[usize::from(filter.preview)]
            .get_or_init(|| self.encode(filter))
            .clone()
    }

    fn encode(&self, filter: &Filter) -> Option<Bytes> {
        let seen: Vec<&Covered> = self
            .covered
            .iter()
            .filter(|c| filter.wants_kind(&c.collection, c.audience))
            .collect();
        if seen.is_empty() {
            return None;
        }
        let mut data = Data {
            target: &self.target,
            seqs: seen.iter().map(|c| c.seq).collect(),
            paths: Vec::new(),
            tags: Vec::new(),
            at: &self.at,
        };
        for c in &seen {
            for p in &c.paths {
                if !data.paths.contains(&p.as_str()) {
                    data.paths.push(p);
                }
            }
            for t in &c.tags {
                if !data.tags.contains(&t.as_str()) {
                    data.tags.push(t);
                }
            }
        }
        let json = serde_json::to_string(&data).ok()?;
        Some(Bytes::from(format!("event: revalidated\ndata: {json}\n\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_proto::names::SiteId;

    fn event(seq: u64, collection: &str, audience: &str, slug: &str) -> FeedEvent {
        let stored = serde_json::json!({
            "id": format!("m{seq}"), "site": "s", "type": "content.updated",
            "collection": collection, "audience": audience, "item": {"id": slug},
            "paths": [format!("/{collection}/{slug}"), format!("/{collection}")],
            "tags": [collection, format!("{collection}:{slug}")],
            "occurred_at": "2026-11-25T10:00:00Z", "received_at": "2026-11-25T10:00:00Z"
        });
        FeedEvent::from_stored(seq, stored.to_string().as_bytes(), &crate::frames::no_site).unwrap()
    }

    fn outcome(seqs: &[u64], paths: &[&str], tags: &[&str], ok: bool) -> CallOutcome {
        CallOutcome {
            site: SiteId::parse("s").unwrap(),
            target: "t1".into(),
            url: "https://example.com/api/revalidate".into(),
            webhook_id: "w".into(),
            attempt: 1,
            seqs: seqs.to_vec(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ok,
            status: Some(200),
            replica: None,
            at: time::macros::datetime!(2026-11-25 10:00:01 UTC),
        }
    }

    fn reader(preview: bool, collections: Option<&[&str]>) -> Filter {
        Filter {
            site: "s".into(),
            collections: collections.map(|c| c.iter().map(|c| c.to_string()).collect()),
            preview,
        }
    }

    fn data(frame: Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(&frame).unwrap();
        let json = text
            .strip_prefix("event: revalidated\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap();
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_visitor_hears_only_of_public_events_and_their_paths() {
        let events = [
            event(1, "blog", "public", "a"),
            event(2, "blog", "preview", "secret-draft"),
        ];
        let call = outcome(
            &[1, 2],
            &["/blog/a", "/blog", "/blog/secret-draft"],
            &["blog", "blog:a", "blog:secret-draft"],
            true,
        );
        let notice = Revalidated::new(&call, &events).unwrap();
        assert_eq!(notice.last_seq(), 2);
        let visitor = data(notice.frame(&reader(false, None)).unwrap());
        assert_eq!(
            visitor,
            serde_json::json!({"target": "t1", "seqs": [1], "paths": ["/blog/a", "/blog"],
                "tags": ["blog", "blog:a"], "at": "2026-11-25T10:00:01Z"})
        );
        let again = notice.frame(&reader(false, None)).unwrap();
        let first = notice.frame(&reader(false, None)).unwrap();
        assert_eq!(
            again.as_ptr(),
            first.as_ptr(),
            "built once, shared by every visitor"
        );
        let editor = data(notice.frame(&reader(true, None)).unwrap());
        assert_eq!(editor["seqs"], serde_json::json!([1, 2]));
        assert_eq!(
            editor["paths"],
            serde_json::json!(["/blog/a", "/blog", "/blog/secret-draft"])
        );
    }

    #[test]
    fn nothing_for_a_reader_who_may_see_none_of_it() {
        let events = [event(3, "blog", "preview", "draft")];
        let call = outcome(&[3], &["/blog/draft"], &[], true);
        let notice = Revalidated::new(&call, &events).unwrap();
        assert!(notice.frame(&reader(false, None)).is_none(), "a draft");
        assert!(
            notice.frame(&reader(true, Some(&["docs"]))).is_none(),
            "another collection"
        );
        assert!(notice.frame(&reader(true, Some(&["blog"]))).is_some());
    }

    #[test]
    fn no_notice_for_a_failed_call_or_unknown_events() {
        let events = [event(4, "blog", "public", "a")];
        assert!(Revalidated::new(&outcome(&[4], &["/blog/a"], &[], false), &events).is_none());
        assert!(Revalidated::new(&outcome(&[5], &["/blog/b"], &[], true), &events).is_none());
    }

    #[test]
    fn only_what_the_call_revalidated() {
        // A target that was sent the tags only (say): the paths aren't claimed fresh.
        let events = [event(6, "blog", "public", "a")];
        let notice = Revalidated::new(&outcome(&[6], &[], &["blog:a"], true), &events).unwrap();
        let frame = data(notice.frame(&reader(false, None)).unwrap());
        assert_eq!(frame["paths"], serde_json::json!([]));
        assert_eq!(frame["tags"], serde_json::json!(["blog:a"]));
    }
}
