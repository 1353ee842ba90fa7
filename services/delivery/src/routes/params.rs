//! Query parameters and `Last-Event-ID`, parsed with a precise message for each bad value.

use std::time::Duration;

use spool_proto::names::is_valid_name;

use crate::error::DeliveryError;

/// Largest poll page.
pub const MAX_LIMIT: usize = 1000;
/// Default poll page.
pub const DEFAULT_LIMIT: usize = 100;
/// Longest long-poll wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
/// Most collections one `collections` filter may name.
pub const MAX_COLLECTIONS: usize = 64;

/// The decoded query string.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `?token=`: EventSource can't send an Authorization header.
    pub fn token(&self) -> Option<&str> {
        self.get("token")
    }

    /// `?collections=a,b`; `None` = every collection. A name given twice counts once
    /// (JetStream refuses overlapping filters).
    pub fn collections(&self) -> Result<Option<Vec<String>>, DeliveryError> {
        let Some(raw) = self.get("collections") else {
            return Ok(None);
        };
        let mut list: Vec<String> = Vec::new();
        for name in raw.split(',').map(|c| c.trim().to_owned()) {
            if !list.contains(&name) {
                list.push(name);
            }
        }
        if let Some(bad) = list.iter().find(|c| !is_valid_name(c)) {
            return Err(bad_param(format!(
                "collections: {bad:?} is not a collection name (comma-separated names matching ^[a-z0-9][a-z0-9_-]{{0,62}}$)"
            )));
        }
        if list.len() > MAX_COLLECTIONS {
            return Err(bad_param(format!(
                "collections: at most {MAX_COLLECTIONS} names"
            )));
        }
        Ok(Some(list))
    }

    /// A yes/no parameter: `1`/`true` or `0`/`false` (absent: no).
    pub fn flag(&self, name: &str) -> Result<bool, DeliveryError> {
        match self.get(name) {
            None | Some("0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(raw) => Err(bad_param(format!(
                "{name}: {raw:?} is not 1, true, 0 or false"
            ))),
        }
    }

    fn number(&self, name: &str, max: u64) -> Result<Option<u64>, DeliveryError> {
        self.get(name)
            .map(|raw| {
                raw.parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| {
                        bad_param(format!(
                            "{name}: {raw:?} is not a whole number from 0 to {max}"
                        ))
                    })
            })
            .transpose()
    }

    pub fn since(&self) -> Result<Option<u64>, DeliveryError> {
        self.number("since", u64::MAX)
    }

    pub fn limit(&self) -> Result<usize, DeliveryError> {
        match self.number("limit", MAX_LIMIT as u64)? {
            None => Ok(DEFAULT_LIMIT),
            Some(0) => Err(bad_param(format!("limit: must be from 1 to {MAX_LIMIT}"))),
            Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_LIMIT)),
        }
    }

    pub fn wait(&self) -> Result<Duration, DeliveryError> {
        Ok(Duration::from_secs(
            self.number("wait", MAX_WAIT_SECS)?.unwrap_or(0),
        ))
    }
}

/// The `Last-Event-ID` header's text (`None` when absent); a value that is not text is a
/// 400, not a reason to start somewhere else.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Result<Option<&str>, DeliveryError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str().map_err(|_| {
                bad_param("Last-Event-ID: not a sequence number (not even text)".into())
            })
        })
        .transpose()
}

/// The SSE start point: `Last-Event-ID` (a reconnecting browser), else `?since=`. A bad
/// `since` is refused even when `Last-Event-ID` wins (the contract test found it accepted).
pub fn stream_cursor(
    params: &Params,
    last_event_id: Option<&str>,
) -> Result<Option<u64>, DeliveryError> {
    let since = params.since()?;
    match last_event_id.map(str::trim).filter(|v| !v.is_empty()) {
        Some(id) => id
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad_param(format!("Last-Event-ID: {id:?} is not a sequence number"))),
        None => Ok(since),
    }
}

fn bad_param(message: String) -> DeliveryError {
    DeliveryError::BadParameter(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Params {
        Params::parse(Some(q))
    }

    fn message(e: DeliveryError) -> String {
        e.to_string()
    }

    #[test]
    fn good_values() {
        let q = p("since=5&limit=10&wait=30&collections=blog,%20pages&token=t%2B1");
        assert_eq!(q.since().unwrap(), Some(5));
        assert_eq!(q.limit().unwrap(), 10);
        assert_eq!(q.wait().unwrap(), Duration::from_secs(30));
        assert_eq!(
            q.collections().unwrap(),
            Some(vec!["blog".to_string(), "pages".to_string()])
        );
        assert_eq!(q.token(), Some("t+1"));
        let none = p("");
        assert_eq!(
            (
                none.since().unwrap(),
                none.limit().unwrap(),
                none.wait().unwrap()
            ),
            (None, 100, Duration::ZERO)
        );
        assert_eq!(none.collections().unwrap(), None);
        assert!(p("revalidated=1").flag("revalidated").unwrap());
        assert!(p("revalidated=true").flag("revalidated").unwrap());
        assert!(!p("revalidated=0").flag("revalidated").unwrap());
        assert!(!none.flag("revalidated").unwrap());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(message(p("since=-1").since().unwrap_err()).contains("since: \"-1\""));
        assert!(message(p("since=abc").since().unwrap_err()).contains("since"));
        assert!(
            message(p("limit=0").limit().unwrap_err()).contains("limit: must be from 1 to 1000")
        );
        assert!(message(p("limit=1001").limit().unwrap_err()).contains("from 0 to 1000"));
        assert!(message(p("wait=31").wait().unwrap_err()).contains("wait: \"31\""));
        assert!(message(p("collections=Blog").collections().unwrap_err()).contains("\"Blog\""));
        assert!(message(p("collections=").collections().unwrap_err()).contains("collections"));
        assert!(message(p("collections=a,,b").collections().unwrap_err()).contains("collections"));
        assert!(
            message(p("revalidated=yes").flag("revalidated").unwrap_err())
                .contains("revalidated: \"yes\" is not 1, true, 0 or false")
        );
        assert_eq!(
            p("collections=blog,news,blog").collections().unwrap(),
            Some(vec!["blog".to_string(), "news".to_string()])
        );
    }

    #[test]
    fn a_last_event_id_that_is_not_text_is_refused() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert("last-event-id", axum::http::HeaderValue::from_static("7"));
        assert_eq!(last_event_id(&headers).unwrap(), Some("7"));
        let raw = axum::http::HeaderValue::from_bytes(&[0xff, 0x31]).unwrap();
        headers.insert("last-event-id", raw);
        assert!(message(last_event_id(&headers).unwrap_err()).contains("Last-Event-ID"));
    }

    #[test]
    fn last_event_id_wins_over_since() {
        assert_eq!(stream_cursor(&p("since=3"), Some("7")).unwrap(), Some(7));
        assert_eq!(stream_cursor(&p("since=3"), None).unwrap(), Some(3));
        assert_eq!(stream_cursor(&p("since=3"), Some(" ")).unwrap(), Some(3));
        assert_eq!(stream_cursor(&p(""), None).unwrap(), None);
        assert!(message(stream_cursor(&p(""), Some("x1")).unwrap_err()).contains("Last-Event-ID"));
        assert!(
            message(stream_cursor(&p("since=18446744073709551616"), Some("7")).unwrap_err())
                .contains("since"),
            "a bad since is refused even when Last-Event-ID wins"
        );
    }
}
