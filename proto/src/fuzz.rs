//! Fuzz targets (issue #16) for what the CMS and operators send: the webhook body, the
//! Standard Webhooks signature check and secrets, and a site's JSON. Proptest engines over
//! arbitrary and mutated inputs; see the `spool-fuzz` crate for how long they run
//! (`SPOOL_FUZZ_CASES`, `make fuzz`).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use spool_fuzz::{awkward_string, config, mutated_one_of};
use time::{OffsetDateTime, UtcOffset};

use crate::event::{check_path, check_token};
use crate::signing::{SigningKey, VerifyError};
use crate::site::{redact, CollectionRoutes, Notify, RevalidateTarget, REDACTED_MARK};
use crate::{mapping, Audience, CollectionName, EventType, Item, Site, SiteId, WebhookPayload};

// --- Generators of valid values -------------------------------------------------------------

/// A name (site id, collection): `^[a-z0-9][a-z0-9_-]{0,62}$`.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,62}"
}

/// An item id, slug or tag: any text without whitespace or control characters.
fn token() -> impl Strategy<Value = String> {
    "[^\\s\\p{Cc}]{1,40}".prop_filter("at most 256 bytes", |t| check_token("t", t).is_ok())
}

fn slug() -> impl Strategy<Value = String> {
    // Any text, and path-like slugs (nested pages: `docs/intro`, `/x`).
    prop_oneof!["[^\\s\\p{Cc}?#]{1,40}", "(/|[a-z0-9.-]{1,8}){1,6}"]
        .prop_filter("a valid slug", |s| {
            check_token("s", s).is_ok() && !s.split('/').any(|seg| seg == "..")
        })
}

fn path() -> impl Strategy<Value = String> {
    "/[^/\\s\\p{Cc}][^\\s\\p{Cc}]{0,60}|/"
        .prop_filter("a valid path", |p| check_path("p", p).is_ok())
}

/// A JSON value without floats (a float need not come back bit-for-bit from serde_json).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        awkward_string(6).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(awkward_string(3), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn extra_fields() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(
        awkward_string(3).prop_filter("not id or slug", |k| k != "id" && k != "slug"),
        json_value(),
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

/// A time RFC 3339 can write: years 0000 to 9999, offsets in whole minutes.
fn rfc3339_time() -> impl Strategy<Value = OffsetDateTime> {
    (
        -62_135_596_800i64..253_402_214_400,
        0u32..1_000_000_000,
        -(23 * 60 + 59)..=(23i32 * 60 + 59),
    )
        .prop_map(|(secs, nanos, offset_min)| {
            let offset = UtcOffset::from_whole_seconds(offset_min * 60).unwrap_or(UtcOffset::UTC);
            (OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
                + time::Duration::nanoseconds(i64::from(nanos)))
            .to_offset(offset)
        })
        .prop_filter("within RFC 3339's years", |t| {
            (0..=9999).contains(&t.year())
        })
}

fn event_type() -> impl Strategy<Value = EventType> {
    proptest::sample::select(EventType::ALL.to_vec())
}

fn audience() -> impl Strategy<Value = Audience> {
    prop_oneof![Just(Audience::Public), Just(Audience::Preview)]
}

fn valid_payload() -> impl Strategy<Value = WebhookPayload> {
    (
        event_type(),
        name(),
        (token(), proptest::option::of(slug()), extra_fields()),
        proptest::collection::vec(path(), 0..4),
        proptest::collection::vec(token(), 0..4),
        proptest::option::of(rfc3339_time()),
        proptest::option::of(audience()),
    )
        .prop_map(
            |(kind, collection, (id, slug, extra), paths, tags, occurred_at, audience)| {
                WebhookPayload {
                    kind,
                    collection: CollectionName::parse(collection)
                        .unwrap_or_else(|_| unreachable!()),
                    item: Item { id, slug, extra },
                    paths,
                    tags,
                    occurred_at,
                    audience,
                }
            },
        )
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 16..=128).prop_map(|key| {
        use base64::Engine as _;
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    })
}

/// A path or tag template: text and the known placeholders.
fn template(path: bool) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{slug}".to_owned()),
            Just("{id}".to_owned()),
            Just("{collection}".to_owned()),
            "[^\\s\\p{Cc}{}]{1,8}",
        ],
        1..5,
    )
    .prop_map(move |parts| {
        let t = parts.concat();
        if path {
            format!("/{}", t.trim_start_matches('/'))
        } else {
            t
        }
    })
    .prop_filter("a valid template", move |t| {
        !path || check_path("t", t).is_ok()
    })
}

fn url() -> impl Strategy<Value = String> {
    ("https?", "[a-z0-9.-]{1,20}", "(/[^\\s\\p{Cc}]{0,20})?")
        .prop_map(|(scheme, host, path)| format!("{scheme}://{host}{path}"))
}

fn valid_site() -> impl Strategy<Value = Site> {
    (
        (
            name(),
            secret(),
            proptest::collection::vec("[!-~]{16,40}", 0..3),
            any::<bool>(),
        ),
        proptest::collection::vec(
            prop_oneof![
                Just("*".to_owned()),
                "https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?"
            ],
            0..3,
        ),
        proptest::collection::btree_map(
            name(),
            (
                proptest::collection::vec(template(true), 0..3),
                proptest::collection::vec(template(false), 0..3),
            ),
            0..3,
        ),
        proptest::collection::vec(
            (
                url(),
                secret(),
                proptest::option::of(proptest::collection::vec(name(), 0..3)),
                proptest::option::of(proptest::collection::vec(event_type(), 0..3)),
            ),
            0..3,
        ),
        (
            proptest::option::of(proptest::collection::vec(event_type(), 0..5)),
            proptest::option::of(proptest::collection::vec("[^\\s\\p{Cc}]{1,12}", 0..3)),
            proptest::option::of(secret()),
            proptest::option::of(url()),
            proptest::option::of(prop_oneof![
                Just(Notify::Immediate),
                Just(Notify::AfterRevalidate)
            ]),
            proptest::option::of(100u64..=600_000),
        ),
    )
        .prop_map(
            |(
                (id, webhook_secret, read_tokens, public),
                cors_origins,
                collections,
                targets,
                rest,
            )| {
                let coll = |n: String| CollectionName::parse(n).unwrap_or_else(|_| unreachable!());
                let (public_types, public_fields, subscriber_secret, jwks, notify, timeout) = rest;
                Site {
                    id: SiteId::parse(id).unwrap_or_else(|_| unreachable!()),
                    webhook_secret,
                    read_tokens: read_tokens
                        .into_iter()
                        .filter(|t| !t.contains(REDACTED_MARK))
                        .collect(),
                    public,
                    cors_origins,
                    collections: collections
                        .into_iter()
                        .map(|(n, (paths, tags))| (coll(n), CollectionRoutes { paths, tags }))
                        .collect(),
                    revalidate: targets
                        .into_iter()
                        .map(|(url, secret, collections, types)| RevalidateTarget {
                            url,
                            secret,
                            collections: collections.map(|c| c.into_iter().map(coll).collect()),
                            types,
                        })
                        .collect(),
                    public_types,
                    public_fields,
                    subscriber_secret,
                    subscriber_jwks_url: jwks,
                    notify,
                    notify_timeout_ms: timeout,
                }
            },
        )
}

/// Valid webhook bodies to mutate: the contract's example and some smaller ones.
fn body_seeds() -> Vec<Vec<u8>> {
    [
        json!({"type": "content.published", "collection": "blog",
               "item": {"id": "42", "slug": "my-post", "title": "My post", "n": [1, 2.5, null, {"a": true}]},
               "paths": ["/extra/path"], "tags": ["extra-tag"],
               "occurred_at": "2026-11-25T10:00:00Z", "audience": "public"}),
        json!({"type": "content.deleted", "collection": "news", "item": {"id": "1"}}),
        json!({"type": "content.updated", "collection": "a", "item": {"id": "é🦀", "slug": "x/y"},
               "occurred_at": "2026-11-25T10:00:00.123456789+05:30", "audience": "preview"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

fn site_seeds() -> Vec<Vec<u8>> {
    [
        json!({"id": "acme", "webhook_secret": SECRET, "read_tokens": ["rk_live_0123456789abcdef"],
               "public": false, "cors_origins": ["https://acme.example", "*"],
               "collections": {"blog": {"paths": ["/blog/{slug}", "/blog"], "tags": ["blog", "blog:{slug}"]}},
               "revalidate": [{"url": "https://acme.example/api/revalidate", "secret": SECRET,
                               "collections": ["blog"], "types": ["content.published"]}],
               "public_types": ["content.published"], "public_fields": ["slug", "title"],
               "subscriber_secret": SECRET, "subscriber_jwks_url": "https://acme.example/jwks.json",
               "notify": "after_revalidate", "notify_timeout_ms": 5000}),
        json!({"id": "b", "webhook_secret": SECRET}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

// --- Targets --------------------------------------------------------------------------------

/// What a refused body must say: which field and why, never nothing.
fn assert_clear(e: &crate::event::PayloadError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(text.len() > "invalid webhook body: ".len() || !text.is_empty());
    Ok(())
}

/// An accepted body, written back, reads the same (floats aside: `extra` is compared as
/// present, not bit for bit).
fn assert_rereads(p: &WebhookPayload) -> Result<(), TestCaseError> {
    let again = WebhookPayload::parse(&serde_json::to_vec(p).map_err(|e| {
        TestCaseError::fail(format!("an accepted body can't be written back: {e}"))
    })?);
    let again = again.map_err(|e| TestCaseError::fail(format!("written back, refused: {e}")))?;
    prop_assert_eq!(again.kind, p.kind);
    prop_assert_eq!(&again.collection, &p.collection);
    prop_assert_eq!(&again.item.id, &p.item.id);
    prop_assert_eq!(&again.item.slug, &p.item.slug);
    prop_assert_eq!(again.item.extra.len(), p.item.extra.len());
    prop_assert_eq!(&again.paths, &p.paths);
    prop_assert_eq!(&again.tags, &p.tags);
    prop_assert_eq!(again.occurred_at, p.occurred_at);
    prop_assert_eq!(again.audience, p.audience);
    Ok(())
}

/// A site's mapping of an accepted body: paths that are paths, and no template's
/// placeholder left unless the body itself carried it.
fn assert_maps(site: &Site, p: &WebhookPayload) -> Result<(), TestCaseError> {
    let event = mapping::to_event(site, "msg_1", p.clone(), OffsetDateTime::UNIX_EPOCH);
    for path in &event.paths {
        prop_assert!(
            check_path("path", path).is_ok(),
            "{path:?} of {:?}",
            site.routes_for(&p.collection)
        );
    }
    prop_assert_eq!(event.kind, p.kind);
    prop_assert_eq!(&event.item, &p.item);
    Ok(())
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn fuzz_webhook_body_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        match WebhookPayload::parse(&body) {
            Ok(p) => assert_rereads(&p)?,
            Err(e) => assert_clear(&e)?,
        }
    }

    #[test]
    fn fuzz_webhook_body_mutated(body in mutated_one_of(body_seeds())) {
        match WebhookPayload::parse(&body) {
            Ok(p) => {
                assert_rereads(&p)?;
                let site = Site::from_json(&site_seeds()[0]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                assert_maps(&site, &p)?;
            }
            Err(e) => assert_clear(&e)?,
        }
    }

    /// Bodies of the right shape with arbitrary values in every field.
    #[test]
    fn fuzz_webhook_body_shapes(
        kind in prop_oneof![event_type().prop_map(|t| json!(t.as_str())), json_value()],
        collection in prop_oneof![name().prop_map(Value::from), awkward_string(4).prop_map(Value::from)],
        id in prop_oneof![token().prop_map(Value::from), json_value()],
        slug in proptest::option::of(prop_oneof![slug().prop_map(Value::from), awkward_string(6).prop_map(Value::from)]),
        paths in proptest::collection::vec(prop_oneof![path().prop_map(Value::from), awkward_string(4).prop_map(Value::from)], 0..4),
        tags in proptest::collection::vec(awkward_string(3), 0..4),
        occurred_at in proptest::option::of(prop_oneof![Just(json!("2026-11-25T10:00:00Z")), awkward_string(4).prop_map(Value::from), json_value()]),
    ) {
        let mut item = json!({"id": id});
        if let Some(slug) = slug { item["slug"] = slug; }
        let mut body = json!({"type": kind, "collection": collection, "item": item, "paths": paths, "tags": tags});
        if let Some(t) = occurred_at { body["occurred_at"] = t; }
        match WebhookPayload::parse(body.to_string().as_bytes()) {
            Ok(p) => assert_rereads(&p)?,
            Err(e) => assert_clear(&e)?,
        }
    }

    #[test]
    fn fuzz_webhook_body_valid_round_trips(p in valid_payload()) {
        let body = serde_json::to_vec(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = WebhookPayload::parse(&body);
        prop_assert_eq!(back.as_ref(), Ok(&p), "{}", String::from_utf8_lossy(&body));
    }

    /// The mapping of any valid body with any valid site's templates.
    #[test]
    fn fuzz_mapping_of_valid_bodies(site in valid_site(), mut p in valid_payload(), pick in any::<proptest::sample::Index>()) {
        // Mostly a collection the site has templates for.
        let names: Vec<&CollectionName> = site.collections.keys().collect();
        if !names.is_empty() && pick.index(4) > 0 {
            p.collection = names[pick.index(names.len())].clone();
        }
        assert_maps(&site, &p)?;
    }

    /// Any header values, body, clock and tolerance: an answer, never a panic; and only a
    /// signature made with the key over these exact bytes is accepted.
    #[test]
    fn fuzz_signature_check_arbitrary(
        id in proptest::option::of(awkward_string(4)),
        ts in proptest::option::of(prop_oneof![any::<i64>().prop_map(|t| t.to_string()), awkward_string(3)]),
        sigs in proptest::option::of(prop_oneof![awkward_string(6), "(v1,[A-Za-z0-9+/=]{0,50} ?){0,4}"]),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
        tolerance in prop_oneof![any::<i64>(), 0i64..600],
    ) {
        let key = SigningKey::from_secret(SECRET).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verdict = key.verify(id.as_deref(), ts.as_deref(), sigs.as_deref(), &body, now, tolerance);
        if verdict.is_ok() {
            // Accepted: then one of the signatures is the real one (which random text
            // essentially never is).
            let real = key.sign(id.as_deref().unwrap_or(""), ts.as_deref().unwrap_or("").trim().parse().unwrap_or(0), &body);
            prop_assert!(sigs.as_deref().unwrap_or("").split(' ').any(|s| s == real));
        }
    }

    #[test]
    fn fuzz_signature_round_trip(
        secret in secret(),
        id in "[!-~]{1,256}",
        now in 0i64..4_000_000_000,
        skew in -300i64..=300,
        body in proptest::collection::vec(any::<u8>(), 0..256),
        junk in proptest::collection::vec(prop_oneof![awkward_string(3), "v1,[A-Za-z0-9+/]{43}=", "v2,[A-Za-z0-9+/]{43}="], 0..4),
        flip in any::<proptest::sample::Index>(),
    ) {
        let key = SigningKey::from_secret(&secret).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ts = now + skew;
        let sig = key.sign(&id, ts, &body);
        let ts_s = ts.to_string();
        let mut list: Vec<String> = junk.iter().filter(|j| !j.contains(' ') && !j.is_empty()).cloned().collect();
        list.insert(flip.index(list.len() + 1), sig.clone());
        let header = list.join(" ");
        prop_assert_eq!(key.verify(Some(&id), Some(&ts_s), Some(&header), &body, now, 300), Ok(()));
        // Any other id, time or body: refused.
        let other_id = format!("{id}x");
        prop_assert!(key.verify(Some(&other_id), Some(&ts_s), Some(&sig), &body, now, 300).is_err());
        let other_ts = (if skew > 0 { ts - 1 } else { ts + 1 }).to_string();
        prop_assert_eq!(key.verify(Some(&id), Some(&other_ts), Some(&sig), &body, now, 300), Err(VerifyError::NoMatchingSignature));
        let mut other_body = body.clone();
        other_body.push(b' ');
        prop_assert_eq!(key.verify(Some(&id), Some(&ts_s), Some(&sig), &other_body, now, 300), Err(VerifyError::NoMatchingSignature));
        // Another key: refused.
        let other = SigningKey::from_secret(SECRET).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if other.as_bytes() != key.as_bytes() {
            prop_assert!(other.verify(Some(&id), Some(&ts_s), Some(&sig), &body, now, 300).is_err());
        }
    }

    #[test]
    fn fuzz_secrets(text in prop_oneof![awkward_string(6), "whsec_[A-Za-z0-9+/=]{0,200}".prop_map(String::from)], key in proptest::collection::vec(any::<u8>(), 0..200)) {
        // Arbitrary text: a key or an error, never a panic.
        let _ = SigningKey::from_secret(&text);
        // Any key of 16 to 128 bytes, written as a secret, reads back as itself.
        use base64::Engine as _;
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        match SigningKey::from_secret(&secret) {
            Ok(k) => prop_assert_eq!(k.as_bytes(), &key[..]),
            Err(e) => prop_assert!(!(16..=128).contains(&key.len()), "{e}"),
        }
        // Redaction never panics and never shows more than a prefix and 4 characters.
        let red = redact(&text);
        prop_assert!(red.contains(REDACTED_MARK));
        prop_assert!(red.chars().count() <= 12 + 1 + 4, "{red:?}");
    }

    #[test]
    fn fuzz_site_json_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(site) = Site::from_json(&bytes) {
            prop_assert_eq!(site.validate(), Ok(()));
        }
    }

    #[test]
    fn fuzz_site_json_mutated(bytes in mutated_one_of(site_seeds())) {
        match Site::from_json(&bytes) {
            Ok(site) => {
                let again = serde_json::to_vec(&site).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(Site::from_json(&again), Ok(site.clone()));
                // Redacted, it is refused back.
                prop_assert!(site.redacted().has_redacted_secret());
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid site: ") && !e.0.is_empty()),
        }
    }

    #[test]
    fn fuzz_site_valid_round_trips(site in valid_site()) {
        let json = serde_json::to_vec(&site).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Site::from_json(&json), Ok(site.clone()), "{}", String::from_utf8_lossy(&json));
    }

    /// A site with arbitrary text in every string field: each bad value is named.
    #[test]
    fn fuzz_site_arbitrary_fields(
        site in valid_site(),
        field in 0usize..8,
        value in awkward_string(5),
    ) {
        let mut v = serde_json::to_value(&site).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (pointer, name) = match field {
            0 => ("/webhook_secret", "webhook_secret"),
            1 => ("/read_tokens", "read_tokens[0]"),
            2 => ("/cors_origins", "cors_origins[0]"),
            3 => ("/revalidate", "revalidate[0].url"),
            4 => ("/subscriber_secret", "subscriber_secret"),
            5 => ("/subscriber_jwks_url", "subscriber_jwks_url"),
            6 => ("/public_fields", "public_fields[0]"),
            _ => ("/collections", "collections.c.paths[0]"),
        };
        let replacement = match field {
            1 | 2 | 6 => json!([value]),
            3 => json!([{"url": value, "secret": SECRET}]),
            7 => json!({"c": {"paths": [value]}}),
            _ => json!(value),
        };
        if let Some(slot) = v.pointer_mut(pointer) { *slot = replacement; } else if let Some(obj) = v.as_object_mut() {
            obj.insert(pointer[1..].to_owned(), replacement);
        }
        match Site::from_json(v.to_string().as_bytes()) {
            Ok(site) => prop_assert_eq!(site.validate(), Ok(())),
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains(name), "{text} does not name {name}");
                // A URL may carry a token: a message names the field, never quotes the URL.
                if field == 3 && value.len() > 3 {
                    prop_assert!(!text.contains(&value), "{text} quotes the URL");
                }
            }
        }
    }
}
