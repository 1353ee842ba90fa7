//! Who may read what on the delivery: read tokens per site (header or `?token=`), public
//! sites, unknown and malformed sites, bad parameters, CORS, and transient trouble (SSE
//! answers 200 + `retry:`, the poll 503 + `Retry-After`).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use spool_integration_tests::nats_server::NatsServer;
use spool_integration_tests::services::{delivery_config, ingest_config, TestService};
use spool_integration_tests::sse::SseClient;
use spool_integration_tests::{eventually, site_json};

use crate::delivery_stream::System;

const T: Duration = Duration::from_secs(10);
const ACME_TOKEN: &str = "rk_test_acme_0123456789";
const ORIGIN: &str = "https://acme.example";

const POLL: &str = "/events";
const STREAM: &str = "/events/stream";

/// A GET of `/v1/sites/{site}{endpoint}{query}` with optional bearer token and headers.
fn get(
    delivery: &TestService,
    site: &str,
    endpoint: &str,
    query: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut r = delivery
        .http
        .get(delivery.url(&format!("/v1/sites/{site}{endpoint}{query}")));
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r
}

/// The answer's status, headers, and body (read to the end for errors and polls; an SSE
/// 200 is read only up to its `ready` event).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.expect("delivery request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let is_sse = headers
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let body = if is_sse {
        // Don't read an open stream to its end: the first chunk says enough.
        let mut r = r;
        let chunk = tokio::time::timeout(T, r.chunk())
            .await
            .expect("a first SSE chunk")
            .expect("SSE body");
        Value::String(String::from_utf8_lossy(&chunk.unwrap_or_default()).into_owned())
    } else {
        r.json().await.unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Asserts a JSON error answer with `status` and `code`; returns its message.
fn assert_error(a: &Answer, status: u16, code: &str, what: &str) -> String {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.body["error"]["code"], code, "{what}: {}", a.body);
    assert_eq!(
        a.headers["content-type"], "application/json",
        "{what}: errors are JSON"
    );
    let message = a.body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {}", a.body));
    assert!(!message.is_empty(), "{what}");
    message.to_owned()
}

fn assert_unauthorized(a: &Answer, what: &str) {
    assert_error(a, 401, "unauthorized", what);
    assert_eq!(a.headers["www-authenticate"], "Bearer", "{what}");
}

/// The delivery answers 200 for `site` (it learnt the site from the registry watch).
async fn wait_for_site(delivery: &TestService, site: &str, token: Option<&str>) {
    eventually(&format!("the delivery to know site {site}"), T, || async {
        let r = get(delivery, site, POLL, "", token, &[])
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_token_of_one_site_never_reads_another() {
    let sys = System::start().await;
    sys.ingest.put_site(&site_json("other")).await;
    let other_token = "rk_test_other_0123456789";
    wait_for_site(&sys.delivery, "other", Some(other_token)).await;

    for endpoint in [POLL, STREAM] {
        for (site, token) in [("other", ACME_TOKEN), ("acme", other_token)] {
            let what = format!("{site}{endpoint} with another site's token");
            let a = send(get(&sys.delivery, site, endpoint, "", Some(token), &[])).await;
            assert_unauthorized(&a, &what);
            let a = send(get(
                &sys.delivery,
                site,
                endpoint,
                &format!("?token={token}"),
                None,
                &[],
            ))
            .await;
            assert_unauthorized(&a, &format!("{what} in ?token="));
        }
        for (what, token, query) in [
            ("no token", None, ""),
            ("a wrong token", Some("rk_test_wrong_0123456789"), ""),
            ("an empty ?token=", None, "?token="),
            ("a wrong ?token=", None, "?token=rk_test_wrong_0123456789"),
        ] {
            let a = send(get(&sys.delivery, "acme", endpoint, query, token, &[])).await;
            assert_unauthorized(&a, &format!("acme{endpoint} with {what}"));
        }
        // Not a bearer scheme.
        let a = send(get(
            &sys.delivery,
            "acme",
            endpoint,
            "",
            None,
            &[("authorization", &format!("Basic {ACME_TOKEN}"))],
        ))
        .await;
        assert_unauthorized(&a, &format!("acme{endpoint} with Basic"));
    }
}

#[tokio::test]
async fn a_query_token_works_like_the_header() {
    let sys = System::start().await;
    let seq = sys.publish("m1", "blog").await;
    let query = format!("?since=0&token={ACME_TOKEN}");

    // Long-polls: the delivery's feed may be a moment behind the ingest's 202.
    let a = send(get(
        &sys.delivery,
        "acme",
        POLL,
        &format!("{query}&wait=10"),
        None,
        &[],
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = send(get(
        &sys.delivery,
        "acme",
        POLL,
        "?since=0&wait=10",
        Some(ACME_TOKEN),
        &[],
    ))
    .await;
    assert_eq!(a.body, b.body, "?token= and the header read the same page");
    assert_eq!(a.body["events"][0]["seq"], seq);

    let mut client =
        SseClient::connect(get(&sys.delivery, "acme", STREAM, &query, None, &[]), None).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.next_message(T).await.unwrap().id, seq);
}

#[tokio::test]
async fn a_public_site_is_readable_without_a_token() {
    let sys = System::start().await;
    let mut open = site_json("open");
    open["public"] = true.into();
    sys.ingest.put_site(&open).await;
    wait_for_site(&sys.delivery, "open", None).await;

    let a = send(get(&sys.delivery, "open", POLL, "?since=0", None, &[])).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["events"], serde_json::json!([]));
    let mut client =
        SseClient::connect(get(&sys.delivery, "open", STREAM, "", None, &[]), None).await;
    assert_eq!(client.status, 200);
    let ready = client.next_event(T).await.unwrap();
    assert_eq!(ready.event, "ready");
    // Any token (even another site's) is fine on a public site.
    let a = send(get(&sys.delivery, "open", POLL, "", Some(ACME_TOKEN), &[])).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // The private site next to it still needs its token.
    let a = send(get(&sys.delivery, "acme", POLL, "", None, &[])).await;
    assert_unauthorized(&a, "acme without a token");
}

#[tokio::test]
async fn a_site_change_takes_effect_without_a_restart() {
    let sys = System::start().await;
    let mut acme = site_json("acme");
    acme["read_tokens"] = serde_json::json!(["rk_test_rotated_0123456789"]);
    sys.ingest.put_site(&acme).await;
    eventually("the old token to be refused", T, || async {
        let r = get(&sys.delivery, "acme", POLL, "", Some(ACME_TOKEN), &[])
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
    let a = send(get(
        &sys.delivery,
        "acme",
        POLL,
        "",
        Some("rk_test_rotated_0123456789"),
        &[],
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let status = sys
        .ingest
        .admin(Method::DELETE, "/v1/admin/sites/acme")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    eventually("the deleted site to be unknown", T, || async {
        let r = get(&sys.delivery, "acme", POLL, "", Some(ACME_TOKEN), &[])
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unknown_sites_look_like_private_ones_and_malformed_ids_are_named() {
    let sys = System::start().await;
    for endpoint in [POLL, STREAM] {
        for token in [None, Some("rk_someone_elses"), Some(ACME_TOKEN)] {
            let a = send(get(&sys.delivery, "nosuchsite", endpoint, "", token, &[])).await;
            let what = format!("nosuchsite{endpoint} with {token:?}");
            let message = assert_error(&a, 401, "unauthorized", &what);
            assert!(!message.contains("nosuchsite"), "{message}");
            if token != Some(ACME_TOKEN) {
                // Exactly what the private site acme answers the same caller.
                let private = send(get(&sys.delivery, "acme", endpoint, "", token, &[])).await;
                assert_eq!(
                    (a.status, &a.body),
                    (private.status, &private.body),
                    "{what}"
                );
            }
            for bad in ["Acme", "-acme", "acme.example", "a%20b", &"a".repeat(64)] {
                let a = send(get(&sys.delivery, bad, endpoint, "", token, &[])).await;
                assert_error(&a, 400, "invalid_site_id", &format!("{bad}{endpoint}"));
            }
        }
    }
}

/// (endpoint, query, headers, the parameter the message must name).
type BadCase = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[tokio::test]
async fn every_bad_parameter_is_a_400_naming_it() {
    let sys = System::start().await;
    let mut cases: Vec<BadCase> = Vec::new();
    for endpoint in [POLL, STREAM] {
        for (query, name) in [
            ("?since=-1", "since"),
            ("?since=abc", "since"),
            ("?since=1.5", "since"),
            ("?since=", "since"),
            ("?since=18446744073709551616", "since"),
            ("?collections=Bad", "collections"),
            ("?collections=blog,Bad", "collections"),
            ("?collections=", "collections"),
            ("?collections=blog,,pages", "collections"),
        ] {
            cases.push((endpoint, query, vec![], name));
        }
    }
    for (query, name) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=ten", "limit"),
        ("?wait=31", "wait"),
        ("?wait=-1", "wait"),
        ("?wait=1.5", "wait"),
        ("?since=1&limit=0", "limit"),
        ("?since=1&wait=31", "wait"),
    ] {
        cases.push((POLL, query, vec![], name));
    }
    for id in ["abc", "-1", "1.5", "12abc"] {
        cases.push((STREAM, "", vec![("last-event-id", id)], "Last-Event-ID"));
        // The header wins over a good since.
        cases.push((
            STREAM,
            "?since=0",
            vec![("last-event-id", id)],
            "Last-Event-ID",
        ));
    }
    for (endpoint, query, headers, name) in &cases {
        let what = format!("{endpoint}{query} {headers:?}");
        let a = send(get(
            &sys.delivery,
            "acme",
            endpoint,
            query,
            Some(ACME_TOKEN),
            headers,
        ))
        .await;
        let message = assert_error(&a, 400, "invalid_parameter", &what);
        assert!(
            message.contains(name),
            "{what}: the message {message:?} does not name {name}"
        );
    }
    // The edges are fine.
    for query in [
        "?since=0&limit=1&wait=0",
        "?since=0&limit=1000",
        "?since=18446744073709551615&limit=1",
        "?collections=blog,pages",
    ] {
        let a = send(get(
            &sys.delivery,
            "acme",
            POLL,
            query,
            Some(ACME_TOKEN),
            &[],
        ))
        .await;
        assert_eq!(a.status, 200, "{query}: {}", a.body);
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every value of a comma-separated header (all its occurrences), lower-cased.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn preflight(
    delivery: &TestService,
    site: &str,
    endpoint: &str,
    origin: &str,
) -> reqwest::RequestBuilder {
    delivery
        .http
        .request(
            Method::OPTIONS,
            delivery.url(&format!("/v1/sites/{site}{endpoint}")),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id",
        )
}

#[tokio::test]
async fn cors_preflight_allows_the_site_origins_only() {
    let sys = System::start().await;
    for endpoint in [POLL, STREAM] {
        let r = preflight(&sys.delivery, "acme", endpoint, ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "preflight {endpoint}");
        let h = r.headers();
        assert_eq!(header(h, "access-control-allow-origin"), Some(ORIGIN));
        assert!(list(h, "vary").contains(&"origin".to_owned()), "{h:?}");
        assert!(
            list(h, "access-control-allow-methods").contains(&"get".to_owned()),
            "{h:?}"
        );
        let allowed = list(h, "access-control-allow-headers");
        for name in ["authorization", "last-event-id"] {
            assert!(
                allowed.contains(&name.to_owned()),
                "{endpoint}: {name} not in {allowed:?}"
            );
        }

        let a = send(preflight(
            &sys.delivery,
            "acme",
            endpoint,
            "https://evil.example",
        ))
        .await;
        let message = assert_error(
            &a,
            403,
            "origin_not_allowed",
            &format!("preflight {endpoint}"),
        );
        assert!(message.contains("https://evil.example"), "{message}");
        assert!(!a.headers.contains_key("access-control-allow-origin"));

        let a = send(preflight(&sys.delivery, "nosuchsite", endpoint, ORIGIN)).await;
        assert_error(
            &a,
            403,
            "origin_not_allowed",
            &format!("preflight nosuchsite{endpoint}: as a site without that origin"),
        );
        let a = send(preflight(&sys.delivery, "Bad", endpoint, ORIGIN)).await;
        assert_error(
            &a,
            400,
            "invalid_site_id",
            &format!("preflight Bad{endpoint}"),
        );
    }
}

#[tokio::test]
async fn cors_headers_on_gets_from_an_allowed_origin_only() {
    let sys = System::start().await;
    let origin = [("origin", ORIGIN)];
    for endpoint in [POLL, STREAM] {
        let a = send(get(
            &sys.delivery,
            "acme",
            endpoint,
            "",
            Some(ACME_TOKEN),
            &origin,
        ))
        .await;
        assert_eq!(a.status, 200, "{endpoint}: {}", a.body);
        assert_eq!(
            header(&a.headers, "access-control-allow-origin"),
            Some(ORIGIN),
            "{endpoint}"
        );
        assert!(
            list(&a.headers, "vary").contains(&"origin".to_owned()),
            "{endpoint}"
        );

        // A refusal carries them too, so the page can read why.
        let a = send(get(&sys.delivery, "acme", endpoint, "", None, &origin)).await;
        assert_unauthorized(
            &a,
            &format!("{endpoint} from the allowed origin without a token"),
        );
        assert_eq!(
            header(&a.headers, "access-control-allow-origin"),
            Some(ORIGIN),
            "{endpoint} 401"
        );
        assert!(
            list(&a.headers, "vary").contains(&"origin".to_owned()),
            "{endpoint} 401"
        );
        let a = send(get(
            &sys.delivery,
            "acme",
            endpoint,
            "?since=x",
            Some(ACME_TOKEN),
            &origin,
        ))
        .await;
        assert_error(&a, 400, "invalid_parameter", &format!("{endpoint}?since=x"));
        assert_eq!(
            header(&a.headers, "access-control-allow-origin"),
            Some(ORIGIN),
            "{endpoint} 400"
        );

        // Another origin: served (CORS is the browser's to enforce) but not allowed.
        let evil = [("origin", "https://evil.example")];
        let a = send(get(
            &sys.delivery,
            "acme",
            endpoint,
            "",
            Some(ACME_TOKEN),
            &evil,
        ))
        .await;
        assert_eq!(a.status, 200, "{endpoint}");
        assert!(
            !a.headers.contains_key("access-control-allow-origin"),
            "{endpoint}: {:?}",
            a.headers
        );
        let a = send(get(&sys.delivery, "acme", endpoint, "", None, &evil)).await;
        assert_unauthorized(&a, endpoint);
        assert!(!a.headers.contains_key("access-control-allow-origin"));
    }
    // A site with `*` allows any origin.
    let mut star = site_json("star");
    star["cors_origins"] = serde_json::json!(["*"]);
    sys.ingest.put_site(&star).await;
    let token = "rk_test_star_0123456789";
    wait_for_site(&sys.delivery, "star", Some(token)).await;
    let anywhere = [("origin", "https://anywhere.example")];
    let a = send(get(&sys.delivery, "star", POLL, "", Some(token), &anywhere)).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        a.headers
    );
    let r = preflight(&sys.delivery, "star", STREAM, "https://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_answers_sse_200_with_retry_and_the_poll_503() {
    let mut nats = NatsServer::start().await;
    let ingest = TestService::start(ingest_config(&nats.url())).await;
    ingest.put_site(&site_json("acme")).await;
    nats.stop().await;
    let delivery = TestService::start_delivery_unready(delivery_config(&nats.url())).await;

    let r = get(&delivery, "acme", STREAM, "", Some(ACME_TOKEN), &[])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a browser's EventSource must not give up");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(T, r.text())
        .await
        .expect("the stream ends at once")
        .unwrap();
    assert_eq!(body, "retry: 3000\n\n", "just the retry hint");
    // With Last-Event-ID and a filter too.
    let r = get(
        &delivery,
        "acme",
        STREAM,
        "?collections=blog",
        Some(ACME_TOKEN),
        &[("last-event-id", "5")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(T, r.text())
        .await
        .expect("ends")
        .unwrap();
    assert_eq!(body, "retry: 3000\n\n");

    let a = send(get(
        &delivery,
        "acme",
        POLL,
        "?since=0",
        Some(ACME_TOKEN),
        &[],
    ))
    .await;
    assert_error(&a, 503, "unavailable", "poll with NATS down");
    assert_eq!(header(&a.headers, "retry-after"), Some("2"));

    // What retrying won't change is still a 4xx.
    let a = send(get(&delivery, "Bad", STREAM, "", None, &[])).await;
    assert_error(&a, 400, "invalid_site_id", "bad site id with NATS down");

    // Back: the same requests are served without a restart.
    nats.restart().await;
    delivery.wait_ready().await;
    let mut client = SseClient::connect(
        get(&delivery, "acme", STREAM, "", Some(ACME_TOKEN), &[]),
        None,
    )
    .await;
    assert_eq!(client.status, 200);
    assert_eq!(client.next_event(T).await.unwrap().event, "ready");
    let a = send(get(
        &delivery,
        "acme",
        POLL,
        "?since=0",
        Some(ACME_TOKEN),
        &[],
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// The auth scheme of `Authorization` is case-insensitive (RFC 9110 §11.1).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let sys = System::start().await;
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {ACME_TOKEN}");
        for endpoint in [POLL, STREAM] {
            let a = send(get(
                &sys.delivery,
                "acme",
                endpoint,
                "",
                None,
                &[("authorization", &auth)],
            ))
            .await;
            assert_eq!(a.status, 200, "{scheme} on {endpoint}: {}", a.body);
        }
    }
}

/// Open streams are judged again whenever a site changes: a rotated-out token, a site made
/// private or deleted ends them at once; a change that leaves their access alone doesn't.
#[tokio::test]
async fn access_changes_end_the_open_streams_they_concern() {
    let sys = System::start().await;
    let mut open = site_json("open");
    open["public"] = true.into();
    sys.ingest.put_site(&open).await;
    wait_for_site(&sys.delivery, "open", None).await;
    let stream = |site: &str, token: Option<&str>| {
        SseClient::connect(get(&sys.delivery, site, STREAM, "", token, &[]), None)
    };
    let mut old_token = stream("acme", Some(ACME_TOKEN)).await;
    let mut anonymous = stream("open", None).await;
    assert_eq!(old_token.status, 200);
    assert_eq!(anonymous.status, 200);
    assert_eq!(old_token.next_event(T).await.unwrap().event, "ready");
    assert_eq!(anonymous.next_event(T).await.unwrap().event, "ready");

    // Another site changes: acme's stream is untouched and gets its next event.
    let mut other = site_json("other");
    other["public"] = true.into();
    sys.ingest.put_site(&other).await;
    let seq = sys.publish("m1", "blog").await;
    assert_eq!(old_token.next_message(T).await.unwrap().id, seq);

    // acme's token rotates: the stream opened with the old one ends.
    let mut rotated = site_json("acme");
    rotated["read_tokens"] = serde_json::json!(["rk_test_acme_rotated_0123456789"]);
    sys.ingest.put_site(&rotated).await;
    assert!(
        old_token.next_event(T).await.is_none(),
        "the old token's stream went on"
    );

    // The public site goes private: its anonymous stream ends.
    open["public"] = false.into();
    sys.ingest.put_site(&open).await;
    assert!(
        anonymous.next_event(T).await.is_none(),
        "the anonymous stream went on"
    );

    // A reader with a current token is ended when its site is deleted.
    let mut current = stream("acme", Some("rk_test_acme_rotated_0123456789")).await;
    assert_eq!(current.status, 200);
    assert_eq!(current.next_event(T).await.unwrap().event, "ready");
    let r = sys
        .ingest
        .admin(Method::DELETE, "/v1/admin/sites/acme")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(
        current.next_event(T).await.is_none(),
        "a deleted site's stream went on"
    );
}
