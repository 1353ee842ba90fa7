//! Site ids, collection names and every NATS name (streams, subjects, bucket, headers).
//! This is the only place these strings are spelled.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The JetStream stream holding every content event.
pub const EVENTS_STREAM: &str = "SPOOL_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "spool.events.>";
/// The JetStream stream holding dead letters of the revalidator.
pub const DLQ_STREAM: &str = "SPOOL_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "spool.dlq.>";
/// The JetStream stream of revalidation outcomes: one record per call the revalidator made
/// (which events and paths/tags it covered, how the target answered).
pub const OUTCOMES_STREAM: &str = "SPOOL_OUTCOMES";
/// Subjects of [`OUTCOMES_STREAM`].
pub const OUTCOMES_SUBJECTS: &str = "spool.outcomes.>";
/// The JetStream stream holding the revalidator's waiting retries (work queue, message
/// schedules: nats-server 2.12+).
pub const RETRY_STREAM: &str = "SPOOL_RETRY";
/// Subjects of [`RETRY_STREAM`].
pub const RETRY_SUBJECTS: &str = "spool.retry.>";
/// Where the server publishes a retry when its time comes: what the retry consumer reads.
pub const RETRY_DUE_FILTER: &str = "spool.retry.due.>";
/// The NATS KV bucket of paused revalidation targets (key `<site>.<target>`): every
/// revalidator replica follows it, so a target that failed is left alone by all of them.
pub const TARGETS_BUCKET: &str = "spool-revalidator-targets";
/// The NATS KV bucket of the site registry (key = site id, value = site JSON).
pub const SITES_BUCKET: &str = "spool-sites";
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// `spool.events.<site>.<collection>`: where an event of that site and collection is stored.
pub fn event_subject(site: &SiteId, collection: &CollectionName) -> String {
    format!("spool.events.{site}.{collection}")
}

/// `spool.events.<site>.>`: every event of one site.
pub fn site_events_filter(site: &(impl fmt::Display + ?Sized)) -> String {
    format!("spool.events.{site}.>")
}

/// Where a stream's direct reads are asked for (any replica of a stream that allows direct
/// access answers).
pub fn direct_get_subject(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// `spool.outcomes.<site>`: where the revalidator records its calls for a site.
pub fn outcome_subject(site: &SiteId) -> String {
    format!("spool.outcomes.{site}")
}

/// `spool.dlq.<site>`: where the revalidator dead-letters a site's failed calls.
pub fn dlq_subject(site: &SiteId) -> String {
    format!("spool.dlq.{site}")
}

/// `spool.retry.at.<site>.<target>.<call>`: a retry's schedule, one per call (a schedule's
/// subject is its identity: publishing the same call again replaces it).
pub fn retry_schedule_subject(site: &SiteId, target: &str, call: &str) -> String {
    format!("spool.retry.at.{site}.{target}.{call}")
}

/// `spool.retry.due.<site>.<target>`: where a retry lands when its time comes.
pub fn retry_due_subject(site: &SiteId, target: &str) -> String {
    format!("spool.retry.due.{site}.{target}")
}

/// `spool.retry.*.<site>.>`: every retry of one site, waiting or due.
pub fn site_retries_filter(site: &SiteId) -> String {
    format!("spool.retry.*.{site}.>")
}

/// The `Nats-Msg-Id` of a webhook: the site and the CMS's `webhook-id`, so that the same id
/// sent to two sites is two events, and the same id sent twice to one site is one.
pub fn msg_id(site: &SiteId, webhook_id: &str) -> String {
    format!("{site}:{webhook_id}")
}

/// The rule for site ids and collection names: `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn is_valid_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 62
                && rest.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-'
                })
        }
        None => false,
    }
}

/// A name that breaks the naming rule; its message says what was wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: must match ^[a-z0-9][a-z0-9_-]{{0,62}}$ (lowercase letters, digits, '_' and '-', 1 to 63 characters, starting with a letter or digit)")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                if is_valid_name(&value) {
                    Ok(Self(value))
                } else {
                    Err(InvalidName { what: $what, value })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

name_type!(
    /// A site id: one tenant of Spool Live.
    SiteId,
    "site id"
);
name_type!(
    /// A collection name of the CMS (`blog`, `pages`, ...).
    CollectionName,
    "collection name"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_rejects_examples() {
        for ok in ["acme", "0", "a-b_c", "blog", &"a".repeat(63)] {
            assert!(SiteId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "Acme",
            "a.b",
            "a b",
            "a/b",
            "a>",
            "a*",
            "é",
            &"a".repeat(64),
        ] {
            assert!(SiteId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_are_spelled_per_contract() {
        let site = SiteId::parse("acme").unwrap();
        let coll = CollectionName::parse("blog").unwrap();
        assert_eq!(event_subject(&site, &coll), "spool.events.acme.blog");
        assert_eq!(site_events_filter(&site), "spool.events.acme.>");
        assert_eq!(dlq_subject(&site), "spool.dlq.acme");
        assert_eq!(msg_id(&site, "msg_1"), "acme:msg_1");
    }

    #[test]
    fn error_message_names_the_rule() {
        let err = CollectionName::parse("Blog").unwrap_err().to_string();
        assert!(err.contains("collection name \"Blog\""), "{err}");
        assert!(err.contains("^[a-z0-9][a-z0-9_-]{0,62}$"), "{err}");
    }

    proptest! {
        #[test]
        fn every_string_of_the_rule_is_valid(s in "[a-z0-9][a-z0-9_-]{0,62}") {
            prop_assert!(SiteId::parse(s.clone()).is_ok());
            // A valid name is always a single, wildcard-free NATS subject token.
            prop_assert!(!s.contains(['.', '*', '>', ' ']));
        }

        #[test]
        fn validity_matches_the_contract_regex(s in "\\PC{0,70}|[a-z0-9_-]{0,70}") {
            let re = regex_lite::Regex::new("^[a-z0-9][a-z0-9_-]{0,62}$").unwrap();
            prop_assert_eq!(is_valid_name(&s), re.is_match(&s));
        }

        #[test]
        fn serde_round_trips_and_validates(s in "\\PC{0,70}") {
            let json = serde_json::to_string(&s).unwrap();
            let parsed: Result<CollectionName, _> = serde_json::from_str(&json);
            prop_assert_eq!(parsed.is_ok(), is_valid_name(&s));
        }
    }
}
