//! The pure mapping from a verified webhook to the content event that is stored.

use time::OffsetDateTime;

use crate::event::{Event, WebhookPayload, MAX_PATH_LEN};
use crate::site::Site;

/// Builds the event of a webhook: the site's templates for the collection (or the
/// defaults) expanded with the item, then the payload's own paths and tags, each once, in
/// that order. A template that needs `{slug}` is skipped when the item has none. A path
/// keeps one leading `/` (a slug `/` in `/{slug}` is the path `/`, not `//`, which is no
/// path of the site), and one longer than [`MAX_PATH_LEN`] is skipped.
pub fn to_event(
    site: &Site,
    webhook_id: &str,
    payload: WebhookPayload,
    received_at: OffsetDateTime,
) -> Event {
    let routes = site.routes_for(&payload.collection);
    let expand = |templates: &[String], extra: Vec<String>, path: bool| -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(templates.len() + extra.len());
        let expanded = templates
            .iter()
            .filter_map(|t| expand(t, &payload))
            .filter_map(|value| if path { as_path(value) } else { Some(value) });
        for value in expanded.chain(extra) {
            if !out.contains(&value) {
                out.push(value);
            }
        }
        out
    };
    let paths = expand(&routes.paths, payload.paths.clone(), true);
    let tags = expand(&routes.tags, payload.tags.clone(), false);
    Event {
        seq: 0,
        id: webhook_id.to_owned(),
        site: site.id.clone(),
        kind: payload.kind,
        audience: site.audience_of(payload.kind, payload.audience),
        occurred_at: payload.occurred_at.unwrap_or(received_at),
        received_at,
        collection: payload.collection,
        item: payload.item,
        paths,
        tags,
    }
}

/// An expanded path template as a path: one leading `/`; `None` when too long.
fn as_path(expanded: String) -> Option<String> {
    let path = match expanded.strip_prefix("//") {
        Some(_) => format!("/{}", expanded.trim_start_matches('/')),
        None => expanded,
    };
    (path.len() <= MAX_PATH_LEN).then_some(path)
}

/// Fills `{slug}`, `{id}` and `{collection}`; `None` when the template needs a slug the
/// item lacks.
fn expand(template: &str, payload: &WebhookPayload) -> Option<String> {
    let mut out = template.replace("{collection}", payload.collection.as_str());
    out = out.replace("{id}", &payload.item.id);
    if out.contains("{slug}") {
        out = out.replace("{slug}", payload.item.slug.as_deref()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Item};
    use crate::names::{CollectionName, SiteId};
    use crate::site::CollectionRoutes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn site(collections: BTreeMap<CollectionName, CollectionRoutes>) -> Site {
        Site {
            id: SiteId::parse("acme").unwrap(),
            webhook_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            read_tokens: vec![],
            public: true,
            cors_origins: vec![],
            collections,
            revalidate: vec![],
            public_types: None,
            public_fields: None,
            subscriber_secret: None,
            subscriber_jwks_url: None,
            notify: None,
            notify_timeout_ms: None,
        }
    }

    fn payload(
        collection: &str,
        slug: Option<&str>,
        paths: &[&str],
        tags: &[&str],
    ) -> WebhookPayload {
        WebhookPayload {
            kind: EventType::Published,
            collection: CollectionName::parse(collection).unwrap(),
            item: Item {
                id: "42".into(),
                slug: slug.map(Into::into),
                extra: Default::default(),
            },
            paths: paths.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            occurred_at: None,
            audience: None,
        }
    }

    #[test]
    fn contract_example() {
        let mut collections = BTreeMap::new();
        collections.insert(
            CollectionName::parse("blog").unwrap(),
            CollectionRoutes {
                paths: vec!["/blog/{slug}".into(), "/blog".into()],
                tags: vec!["blog".into(), "blog:{slug}".into()],
            },
        );
        let now = OffsetDateTime::now_utc();
        let e = to_event(
            &site(collections),
            "msg_1",
            payload("blog", Some("my-post"), &["/extra/path"], &["extra-tag"]),
            now,
        );
        assert_eq!(e.paths, ["/blog/my-post", "/blog", "/extra/path"]);
        assert_eq!(e.tags, ["blog", "blog:my-post", "extra-tag"]);
        assert_eq!(e.occurred_at, now);
        assert_eq!(e.id, "msg_1");
    }

    #[test]
    fn defaults_without_an_entry_and_slugless_templates_skipped() {
        let e = to_event(
            &site(BTreeMap::new()),
            "m",
            payload("news", Some("x"), &[], &[]),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(e.paths, ["/news/x", "/news"]);
        assert_eq!(e.tags, ["news", "news:x"]);
        let e = to_event(
            &site(BTreeMap::new()),
            "m",
            payload("news", None, &["/news"], &[]),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(e.paths, ["/news"]);
        assert_eq!(e.tags, ["news"]);
    }

    // Found by fuzz_mapping_of_valid_bodies: the slug "/" in "/{slug}" made the path "//".
    #[test]
    fn a_path_keeps_one_leading_slash_and_a_long_one_is_skipped() {
        let mut collections = BTreeMap::new();
        let long = format!("/{}/{{slug}}", "x".repeat(MAX_PATH_LEN - 8));
        collections.insert(
            CollectionName::parse("pages").unwrap(),
            CollectionRoutes {
                paths: vec!["/{slug}".into(), "/p/{slug}".into(), long],
                tags: vec![],
            },
        );
        let map = |slug| {
            to_event(
                &site(collections.clone()),
                "m",
                payload("pages", Some(slug), &[], &[]),
                OffsetDateTime::UNIX_EPOCH,
            )
            .paths
        };
        assert_eq!(map("/")[..2], ["/", "/p//"]);
        assert_eq!(map("//a/b")[..2], ["/a/b", "/p///a/b"]);
        assert_eq!(map("about").len(), 3);
        assert_eq!(
            map("about-us-and-more"),
            ["/about-us-and-more", "/p/about-us-and-more"]
        );
    }

    proptest! {
        #[test]
        fn mapping_keeps_every_extra_once_and_mapped_first(
            slug in proptest::option::of("[a-z0-9-]{1,20}"),
            extra_paths in proptest::collection::vec("/[a-z]{1,3}", 0..6),
            extra_tags in proptest::collection::vec("[a-z:]{1,4}", 0..6),
        ) {
            let p = payload("blog", slug.as_deref(), &[], &[]);
            let mut p2 = p.clone();
            p2.paths = extra_paths.clone();
            p2.tags = extra_tags.clone();
            let s = site(BTreeMap::new());
            let base = to_event(&s, "m", p, OffsetDateTime::UNIX_EPOCH);
            let full = to_event(&s, "m", p2, OffsetDateTime::UNIX_EPOCH);
            // The mapped ones come first, unchanged.
            prop_assert_eq!(&full.paths[..base.paths.len()], &base.paths[..]);
            prop_assert_eq!(&full.tags[..base.tags.len()], &base.tags[..]);
            // Every extra is present, and nothing appears twice.
            for x in &extra_paths { prop_assert!(full.paths.contains(x)); }
            for x in &extra_tags { prop_assert!(full.tags.contains(x)); }
            let mut dedup = full.paths.clone(); dedup.sort(); dedup.dedup();
            prop_assert_eq!(dedup.len(), full.paths.len());
            let mut dedup = full.tags.clone(); dedup.sort(); dedup.dedup();
            prop_assert_eq!(dedup.len(), full.tags.len());
            // No placeholder survives.
            prop_assert!(full.paths.iter().chain(&full.tags).all(|v| !v.contains(['{', '}'])), "placeholder left in {:?}", full);
        }
    }
}
