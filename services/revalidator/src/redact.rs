//! Target URLs as they may be shown: a site's revalidation URL may carry credentials —
//! userinfo (`https://user:pass@host/…`) or query values (`?token=…`, `?secret=…`) — and
//! must never reach logs, span attributes, metric labels or dead-letter records with them.

/// What replaces a hidden value.
pub const REDACTED: &str = "REDACTED";

/// `url` without its credentials: userinfo removed, every query value (and a query
/// parameter without a value, which may be a bare token) replaced by `REDACTED` — the
/// parameter names stay, so the URL can still be recognised — and a fragment replaced by
/// `REDACTED`. A URL with none of these comes back unchanged.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => redact_parsed(url, parsed),
        Err(_) => redact_text(url),
    }
}

fn redact_parsed(original: &str, mut url: reqwest::Url) -> String {
    let has_userinfo = !url.username().is_empty() || url.password().is_some();
    if !has_userinfo && url.query().is_none() && url.fragment().is_none() {
        return original.to_owned();
    }
    // Neither can fail for a URL with a host, which every http(s) URL has; if it did, the
    // text is redacted by hand instead.
    if has_userinfo && (url.set_username("").is_err() || url.set_password(None).is_err()) {
        return redact_text(original);
    }
    if let Some(query) = url.query().map(redact_query) {
        url.set_query(Some(&query));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some(REDACTED));
    }
    url.into()
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}={REDACTED}"),
            None if pair.is_empty() => String::new(),
            None => REDACTED.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The same, by hand, for text that doesn't parse as a URL.
fn redact_text(url: &str) -> String {
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, _)) => (rest, Some(REDACTED)),
        None => (url, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(redact_query(query))),
        None => (rest, None),
    };
    let (scheme, after) = match rest.split_once("://") {
        Some((scheme, after)) => (Some(scheme), after),
        None => (None, rest),
    };
    let authority_end = after.find('/').unwrap_or(after.len());
    let (authority, path) = after.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&query);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_credentials_is_unchanged() {
        for url in [
            "https://acme.example/api/revalidate",
            "http://127.0.0.1:3001/api/revalidate",
            "https://ACME.example",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn userinfo_is_removed() {
        assert_eq!(
            redact_url("https://user:pa55word@acme.example/api/revalidate"),
            "https://acme.example/api/revalidate"
        );
        assert_eq!(
            redact_url("https://only-a-token@acme.example:8443/r"),
            "https://acme.example:8443/r"
        );
        assert_eq!(
            redact_url("https://:secret@acme.example/r"),
            "https://acme.example/r"
        );
    }

    #[test]
    fn every_query_value_is_replaced_and_names_stay() {
        assert_eq!(
            redact_url("https://acme.example/r?secret=s3cr3t&token=abc&x=1"),
            "https://acme.example/r?secret=REDACTED&token=REDACTED&x=REDACTED"
        );
        assert_eq!(
            redact_url("https://acme.example/r?token=a=b&&flag&empty="),
            "https://acme.example/r?token=REDACTED&&REDACTED&empty=REDACTED"
        );
        assert_eq!(
            redact_url("https://u:p@acme.example/r?sig=abc#frag-secret"),
            "https://acme.example/r?sig=REDACTED#REDACTED"
        );
        let redacted = redact_url("https://acme.example/r?token=%2Fabc%20def");
        assert_eq!(redacted, "https://acme.example/r?token=REDACTED");
    }

    #[test]
    fn text_that_is_not_a_url_is_redacted_by_hand() {
        assert_eq!(
            redact_url("http://user:pw@bad host/r?token=abc#x"),
            "http://bad host/r?token=REDACTED#REDACTED"
        );
        assert_eq!(
            redact_url("http://user:pw@[::1/r?abc"),
            "http://[::1/r?REDACTED"
        );
        assert_eq!(redact_url("nonsense?abc"), "nonsense?REDACTED");
    }

    #[test]
    fn no_secret_survives() {
        for url in [
            "https://user:hunter2@acme.example/r?hunter2",
            "https://acme.example/r?token=hunter2",
            "https://acme.example/r?a=1&secret=hunter2",
            "https://acme.example/r#hunter2",
            "http://hunter2:x@[bad/r",
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains("hunter2"), "{url} -> {redacted}");
        }
    }
}
