//! A site of the registry (the value stored under its id in the `spool-sites` bucket).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{check_path, Audience, EventType, Item};
use crate::names::{CollectionName, SiteId};
use crate::signing::SigningKey;

/// Placeholders a path or tag template may use.
pub const PLACEHOLDERS: [&str; 3] = ["{slug}", "{id}", "{collection}"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: SiteId,
    /// `whsec_<base64>`: verifies the CMS's webhooks.
    pub webhook_secret: String,
    /// Tokens that may read the site's events (SSE and poll).
    #[serde(default)]
    pub read_tokens: Vec<String>,
    /// A public site's events can be read without a token.
    #[serde(default)]
    pub public: bool,
    /// Origins allowed by CORS on the delivery endpoints.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Path and tag templates per collection; a collection without an entry gets the defaults.
    #[serde(default)]
    pub collections: BTreeMap<CollectionName, CollectionRoutes>,
    /// Revalidation webhooks of the site.
    #[serde(default)]
    pub revalidate: Vec<RevalidateTarget>,
    /// The event types visitors see when the CMS doesn't say (`audience` in the webhook);
    /// absent = [`DEFAULT_PUBLIC_TYPES`]. Other types (drafts) reach preview readers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_types: Option<Vec<EventType>>,
    /// The `item` fields visitors see (`id` always); absent = [`DEFAULT_PUBLIC_FIELDS`].
    /// Preview readers get every field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_fields: Option<Vec<String>>,
    /// `whsec_<base64>`: signs the site's short-lived subscriber tokens (HS256 JWTs, minted
    /// by the site's backend); absent = only static read tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_secret: Option<String>,
    /// Where the public keys of the site's asymmetric subscriber tokens (EdDSA, RS256) are
    /// published, as a JWKS; the token's `kid` picks the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_jwks_url: Option<String>,
    /// When browsers hear of an event: at once (`immediate`, the default), or once every
    /// revalidation target that wants it answered `2xx` (`after_revalidate`), so the page
    /// a browser refetches is already fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// With `after_revalidate`: the longest an event is held (ms); it then goes out marked
    /// `"fresh": false`. Default 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_timeout_ms: Option<u64>,
}

/// When a site's readers hear of an event (see [`Site::notify`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    #[default]
    Immediate,
    AfterRevalidate,
}

/// How long an event of an `after_revalidate` site is held at most, by default.
pub const DEFAULT_NOTIFY_TIMEOUT_MS: u64 = 10_000;

/// What visitors see when a site doesn't say.
pub const DEFAULT_PUBLIC_TYPES: [EventType; 3] = [
    EventType::Published,
    EventType::Unpublished,
    EventType::Deleted,
];

/// The `item` fields visitors see when a site doesn't say.
pub const DEFAULT_PUBLIC_FIELDS: [&str; 2] = ["id", "slug"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionRoutes {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevalidateTarget {
    pub url: String,
    /// `whsec_<base64>`: signs the calls to `url`.
    pub secret: String,
    /// The collections this target wants; absent = every collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<CollectionName>>,
    /// The event types this target wants; absent = the public events (a draft saved in the
    /// CMS doesn't rebuild the site's pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<EventType>>,
}

impl RevalidateTarget {
    pub fn wants(&self, collection: &CollectionName) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|list| list.contains(collection))
    }

    /// Does this target want an event of this type and audience?
    pub fn wants_event(&self, kind: EventType, audience: Audience) -> bool {
        match &self.types {
            Some(types) => types.contains(&kind),
            None => audience == Audience::Public,
        }
    }
}

/// Everything wrong with a site, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid site: {}", .0.join("; "))]
pub struct SiteError(pub Vec<String>);

/// The mark a redacted secret carries; a site holding it can't be stored.
pub const REDACTED_MARK: &str = "…";

impl Site {
    /// Parses a site's JSON and checks it; the error lists every problem at once.
    pub fn from_json(bytes: &[u8]) -> Result<Site, SiteError> {
        let site: Site =
            serde_json::from_slice(bytes).map_err(|e| SiteError(vec![e.to_string()]))?;
        site.validate()?;
        Ok(site)
    }

    pub fn validate(&self) -> Result<(), SiteError> {
        let mut problems = Vec::new();
        if let Err(e) = SigningKey::from_secret(&self.webhook_secret) {
            problems.push(format!("webhook_secret: {e}"));
        }
        for (i, token) in self.read_tokens.iter().enumerate() {
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    "read_tokens[{i}]: must be at least 16 characters without whitespace"
                ));
            } else if token.contains(REDACTED_MARK) {
                problems.push(format!(
                    "read_tokens[{i}]: is a redacted value; send the real token"
                ));
            }
        }
        for (i, origin) in self.cors_origins.iter().enumerate() {
            let ok = origin == "*"
                || ((origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin.ends_with('/')
                    && !origin.chars().any(char::is_whitespace));
            if !ok {
                problems.push(format!(
                    "cors_origins[{i}]: {origin:?} must be \"*\" or a scheme://host[:port] origin without a trailing '/'"
                ));
            }
        }
        for (name, routes) in &self.collections {
            for (i, path) in routes.paths.iter().enumerate() {
                let field = format!("collections.{name}.paths[{i}]");
                if let Err(e) = check_path(&field, path) {
                    problems.push(e.to_string());
                }
                check_placeholders(&field, path, &mut problems);
            }
            for (i, tag) in routes.tags.iter().enumerate() {
                let field = format!("collections.{name}.tags[{i}]");
                if tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    problems.push(format!("{field}: must be non-empty without whitespace"));
                }
                check_placeholders(&field, tag, &mut problems);
            }
        }
        for (i, target) in self.revalidate.iter().enumerate() {
            let url = &target.url;
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    // Not quoted: a URL may carry a token, and this message is logged.
                    "revalidate[{i}].url: must be an http(s) URL without whitespace"
                ));
            }
            if let Err(e) = SigningKey::from_secret(&target.secret) {
                problems.push(format!("revalidate[{i}].secret: {e}"));
            }
        }
        if let Some(secret) = &self.subscriber_secret {
            if let Err(e) = SigningKey::from_secret(secret) {
                problems.push(format!("subscriber_secret: {e}"));
            }
        }
        if let Some(ms) = self.notify_timeout_ms {
            if !(100..=600_000).contains(&ms) {
                problems.push(format!(
                    "notify_timeout_ms: {ms} must be from 100 to 600000 (10 minutes)"
                ));
            }
        }
        if let Some(url) = &self.subscriber_jwks_url {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    "subscriber_jwks_url: {url:?} must be an http(s) URL"
                ));
            }
        }
        for (i, field) in self.public_fields.iter().flatten().enumerate() {
            if field.is_empty() || field.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    "public_fields[{i}]: must be a non-empty field name without whitespace"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SiteError(problems))
        }
    }

    /// Who may see an event of this type: the CMS's word if it gave one, else public for
    /// the site's `public_types` and preview for the rest.
    pub fn audience_of(&self, kind: EventType, said: Option<Audience>) -> Audience {
        said.unwrap_or_else(|| {
            let public = match &self.public_types {
                Some(types) => types.contains(&kind),
                None => DEFAULT_PUBLIC_TYPES.contains(&kind),
            };
            if public {
                Audience::Public
            } else {
                Audience::Preview
            }
        })
    }

    /// With `notify: after_revalidate`, the targets (their keys) whose `2xx` an event of
    /// this collection, type and audience waits for, and how long at most; `None` when it
    /// goes out at once.
    pub fn hold_for(
        &self,
        collection: &CollectionName,
        kind: EventType,
        audience: Audience,
    ) -> Option<(Vec<String>, std::time::Duration)> {
        if self.notify != Some(Notify::AfterRevalidate) {
            return None;
        }
        let targets: Vec<String> = self
            .revalidate
            .iter()
            .filter(|t| t.wants(collection) && t.wants_event(kind, audience))
            .map(|t| crate::outcome::target_key(&self.id, &t.url))
            .collect();
        let timeout = self.notify_timeout_ms.unwrap_or(DEFAULT_NOTIFY_TIMEOUT_MS);
        (!targets.is_empty()).then(|| (targets, std::time::Duration::from_millis(timeout)))
    }

    /// The item as visitors see it: `id`, and the site's `public_fields` it has.
    pub fn public_item(&self, item: &Item) -> Item {
        cut_item(item, self.public_fields.as_deref())
    }

    /// The item as visitors see it under the default `public_fields` (for an event whose
    /// site is gone from the registry).
    pub fn default_public_item(item: &Item) -> Item {
        cut_item(item, None)
    }

    /// The path and tag templates of a collection (the site's own, or the defaults).
    pub fn routes_for(&self, collection: &CollectionName) -> CollectionRoutes {
        self.collections
            .get(collection)
            .cloned()
            .unwrap_or_else(CollectionRoutes::default_templates)
    }

    /// Is `token` one of the site's read tokens? Compared in constant time.
    pub fn accepts_read_token(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.read_tokens.iter().fold(false, |found, t| {
            found | bool::from(t.as_bytes().ct_eq(token.as_bytes()))
        })
    }

    /// The site as the admin API shows it: every secret cut to a recognisable stub.
    pub fn redacted(&self) -> Site {
        let mut site = self.clone();
        site.webhook_secret = redact(&site.webhook_secret);
        site.read_tokens = site.read_tokens.iter().map(|t| redact(t)).collect();
        for target in &mut site.revalidate {
            target.secret = redact(&target.secret);
        }
        site.subscriber_secret = site.subscriber_secret.as_deref().map(redact);
        site
    }

    /// True when any secret of the site is a redacted stub (someone PUT back a GET answer).
    pub fn has_redacted_secret(&self) -> bool {
        std::iter::once(&self.webhook_secret)
            .chain(&self.read_tokens)
            .chain(self.revalidate.iter().map(|t| &t.secret))
            .chain(&self.subscriber_secret)
            .any(|s| s.contains(REDACTED_MARK))
    }
}

/// `item` with only `id` and the `fields` it has (absent: [`DEFAULT_PUBLIC_FIELDS`]).
fn cut_item(item: &Item, fields: Option<&[String]>) -> Item {
    let allowed = |name: &str| match fields {
        Some(fields) => fields.iter().any(|f| f == name),
        None => DEFAULT_PUBLIC_FIELDS.contains(&name),
    };
    Item {
        id: item.id.clone(),
        slug: item.slug.clone().filter(|_| allowed("slug")),
        extra: item
            .extra
            .iter()
            .filter(|(name, _)| allowed(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
    }
}

impl CollectionRoutes {
    /// `/{collection}/{slug}`, `/{collection}` and tags `{collection}`, `{collection}:{slug}`.
    pub fn default_templates() -> CollectionRoutes {
        CollectionRoutes {
            paths: vec!["/{collection}/{slug}".into(), "/{collection}".into()],
            tags: vec!["{collection}".into(), "{collection}:{slug}".into()],
        }
    }
}

fn check_placeholders(field: &str, template: &str, problems: &mut Vec<String>) {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            problems.push(format!("{field}: unclosed '{{' in {template:?}"));
            return;
        };
        let placeholder = &rest[start..start + len + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            problems.push(format!(
                "{field}: unknown placeholder {placeholder} in {template:?} (known: {{slug}}, {{id}}, {{collection}})"
            ));
        }
        rest = &rest[start + len + 1..];
    }
}

/// Keeps a secret's prefix (`whsec_`, `rk_live_`) and, for long ones, its last 4 characters.
pub fn redact(secret: &str) -> String {
    let prefix_len = secret.rfind('_').map_or(0, |i| i + 1).min(12);
    let chars: Vec<char> = secret.chars().collect();
    let tail: String = if chars.len() >= 24 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        String::new()
    };
    format!(
        "{}{REDACTED_MARK}{tail}",
        secret.get(..prefix_len).unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn site_json() -> serde_json::Value {
        serde_json::json!({
            "id": "acme",
            "webhook_secret": SECRET,
            "read_tokens": ["rk_live_0123456789abcdef"],
            "public": false,
            "cors_origins": ["https://acme.example"],
            "collections": {
                "blog": { "paths": ["/blog/{slug}", "/blog"], "tags": ["blog", "blog:{slug}"] }
            },
            "revalidate": [
                { "url": "https://acme.example/api/revalidate", "secret": SECRET, "collections": ["blog"] }
            ]
        })
    }

    #[test]
    fn contract_example_is_valid() {
        let site = Site::from_json(site_json().to_string().as_bytes()).unwrap();
        assert_eq!(site.id.as_str(), "acme");
        assert!(site.revalidate[0].wants(&CollectionName::parse("blog").unwrap()));
        assert!(!site.revalidate[0].wants(&CollectionName::parse("pages").unwrap()));
    }

    #[test]
    fn every_problem_is_listed() {
        let mut v = site_json();
        v["webhook_secret"] = "nope".into();
        v["read_tokens"] = serde_json::json!(["short"]);
        v["cors_origins"] = serde_json::json!(["acme.example"]);
        v["collections"]["blog"]["paths"] = serde_json::json!(["blog/{slug}", "/b/{title}"]);
        v["revalidate"][0]["url"] = "ftp://x".into();
        let err = Site::from_json(v.to_string().as_bytes()).unwrap_err();
        let text = err.to_string();
        for want in [
            "webhook_secret:",
            "read_tokens[0]",
            "cors_origins[0]",
            "collections.blog.paths[0]",
            "unknown placeholder {title}",
            "revalidate[0].url",
        ] {
            assert!(text.contains(want), "{text} lacks {want}");
        }
    }

    #[test]
    fn redaction_hides_secrets_and_is_refused_back() {
        let site = Site::from_json(site_json().to_string().as_bytes()).unwrap();
        let red = site.redacted();
        assert_eq!(red.webhook_secret, "whsec_…LaSw");
        assert_eq!(red.read_tokens[0], "rk_live_…cdef");
        assert!(!serde_json::to_string(&red)
            .unwrap()
            .contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2"));
        assert!(red.has_redacted_secret() && !site.has_redacted_secret());
    }

    #[test]
    fn audiences_and_public_items() {
        let mut site = Site::from_json(site_json().to_string().as_bytes()).unwrap();
        assert_eq!(
            site.audience_of(EventType::Published, None),
            Audience::Public
        );
        assert_eq!(
            site.audience_of(EventType::Updated, None),
            Audience::Preview
        );
        assert_eq!(
            site.audience_of(EventType::Updated, Some(Audience::Public)),
            Audience::Public,
            "the CMS's word wins"
        );
        site.public_types = Some(vec![EventType::Updated]);
        assert_eq!(site.audience_of(EventType::Updated, None), Audience::Public);
        assert_eq!(
            site.audience_of(EventType::Published, None),
            Audience::Preview
        );

        let item: Item = serde_json::from_value(serde_json::json!(
            {"id": "42", "slug": "s", "title": "Secret", "summary": "x"}
        ))
        .unwrap();
        let public = serde_json::to_value(site.public_item(&item)).unwrap();
        assert_eq!(public, serde_json::json!({"id": "42", "slug": "s"}));
        site.public_fields = Some(vec!["title".into()]);
        let public = serde_json::to_value(site.public_item(&item)).unwrap();
        assert_eq!(public, serde_json::json!({"id": "42", "title": "Secret"}));

        let target = &mut site.revalidate[0];
        assert!(target.wants_event(EventType::Updated, Audience::Public));
        assert!(!target.wants_event(EventType::Updated, Audience::Preview));
        target.types = Some(vec![EventType::Created]);
        assert!(target.wants_event(EventType::Created, Audience::Preview));
        assert!(!target.wants_event(EventType::Published, Audience::Public));
    }

    #[test]
    fn read_tokens_compare() {
        let site = Site::from_json(site_json().to_string().as_bytes()).unwrap();
        assert!(site.accepts_read_token("rk_live_0123456789abcdef"));
        assert!(!site.accepts_read_token("rk_live_0123456789abcdeX"));
        assert!(!site.accepts_read_token(""));
    }
}
