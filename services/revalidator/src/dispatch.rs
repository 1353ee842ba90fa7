//! One signed revalidation call to a site's target.
//!
//! Only to allowed addresses (see [`crate::destination`]): the client's resolver drops
//! every address the policy refuses, where the connection is made — a name that resolves
//! to a private address, now or after passing an earlier check, is never connected to —
//! and an IP-literal host, which reqwest connects to without resolving, is checked before
//! the call. Redirects are never followed and proxies are never used, so neither can lead
//! a call anywhere else. A refused target is a permanent failure: its events are
//! dead-lettered at once (`target_not_allowed`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use spool_proto::revalidate::RevalidateBody;
use spool_proto::signing::{SigningKey, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use spool_proto::site::RevalidateTarget;
use spool_proto::SiteId;

use crate::destination::{DestinationPolicy, NotAllowed};
use crate::retry::{classify, parse_retry_after, Outcome};

/// What a call came to.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// Why it failed, for the dead-letter record and the logs (never with the URL).
    pub error: Option<String>,
    /// Not called: the target's address is not allowed (a permanent outcome).
    pub not_allowed: bool,
}

impl CallResult {
    fn failed(error: String, outcome: Outcome) -> CallResult {
        CallResult {
            outcome,
            status: None,
            error: Some(error),
            not_allowed: false,
        }
    }

    fn refused(refusal: &NotAllowed) -> CallResult {
        CallResult {
            not_allowed: true,
            ..CallResult::failed(refusal.to_string(), Outcome::Permanent)
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    http: reqwest::Client,
    policy: Arc<DestinationPolicy>,
}

/// The `webhook-id` of a call: the same for every retry of the same events to the same
/// target, different for anything else.
pub fn call_id(site: &SiteId, url: &str, seqs: &[u64]) -> String {
    let mut hash = Sha256::new();
    hash.update(site.as_str());
    hash.update([0]);
    hash.update(url);
    for seq in seqs {
        hash.update(seq.to_be_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("rv_{hex}")
}

impl Dispatcher {
    /// A dispatcher whose calls connect only to addresses `policy` allows.
    pub fn new(timeout: Duration, policy: DestinationPolicy) -> anyhow::Result<Dispatcher> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect of a POST is not a delivery: report it as the answer it is. (Never
            // following one also means a redirect can't lead a call to an address the
            // policy refuses.)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the target's name itself, out of the resolver's sight.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!("spool-revalidator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Dispatcher { http, policy })
    }

    /// POSTs `body` to the target, signed with its secret (Standard Webhooks), with the
    /// trace context of the change. `attempt` (1 = first, 0 = an admin's replay) labels the
    /// call's metrics.
    pub async fn call(
        &self,
        target: &RevalidateTarget,
        id: &str,
        body: &RevalidateBody,
        traceparent: Option<&str>,
        attempt: u64,
    ) -> CallResult {
        let started = Instant::now();
        let result = self.send(target, id, body, traceparent).await;
        if result.not_allowed {
            // Not a call: nothing was sent.
            metrics::counter!("spool_revalidator_targets_refused_total").increment(1);
            return result;
        }
        let class = match result.status {
            Some(s) => format!("{}xx", s / 100),
            None => "none".to_string(),
        };
        let outcome = match result.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent => "permanent",
        };
        let attempt = match attempt {
            0 => "replay",
            1 => "first",
            _ => "retry",
        };
        metrics::counter!("spool_revalidator_calls_total", "outcome" => outcome, "status_class" => class, "attempt" => attempt).increment(1);
        metrics::histogram!("spool_revalidator_call_duration_seconds").record(started.elapsed());
        result
    }

    async fn send(
        &self,
        target: &RevalidateTarget,
        id: &str,
        body: &RevalidateBody,
        traceparent: Option<&str>,
    ) -> CallResult {
        let fail = CallResult::failed;
        let url = match reqwest::Url::parse(&target.url) {
            Ok(url) => url,
            // The site's checks let only http(s) URLs in; this one doesn't parse, and no
            // retry makes it (the message doesn't quote the URL).
            Err(e) => return fail(format!("unusable target URL: {e}"), Outcome::Permanent),
        };
        // An address as host is connected to without the resolver: checked here.
        if let Err(refusal) = self.check_literal(&url) {
            return CallResult::refused(&refusal);
        }
        let key = match SigningKey::from_secret(&target.secret) {
            Ok(key) => key,
            Err(e) => return fail(format!("unusable target secret: {e}"), Outcome::Permanent),
        };
        let payload = match serde_json::to_vec(body) {
            Ok(payload) => payload,
            Err(e) => return fail(format!("encoding the body: {e}"), Outcome::Permanent),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(ID_HEADER, id)
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, key.sign(id, now, &payload));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        match request.body(payload).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now));
                let outcome = classify(Some(status), retry_after);
                let error = (outcome != Outcome::Delivered)
                    .then(|| format!("the target answered {status}"));
                CallResult {
                    outcome,
                    status: Some(status),
                    error,
                    not_allowed: false,
                }
            }
            Err(e) => match refusal_in(&e) {
                Some(refusal) => CallResult::refused(refusal),
                None => fail(describe(e), classify(None, None)),
            },
        }
    }

    /// Refuses a URL whose host is an address the policy doesn't allow.
    fn check_literal(&self, url: &reqwest::Url) -> Result<(), NotAllowed> {
        // The URL parser writes an address host in its canonical form (`[::1]`, and
        // `127.0.0.1` for `2130706433` or `0x7f.1`), which is what is connected to.
        let host = url.host_str().unwrap_or_default();
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        self.policy.check(ip).map_err(|refused| NotAllowed {
            host: ip.to_string(),
            literal: true,
            refused: vec![refused],
        })
    }
}

/// The revalidator's resolver: the system's (getaddrinfo), minus every address the policy
/// refuses; a name left with none fails with [`NotAllowed`]. reqwest connects only to what
/// it returns, on every new connection, so the check holds whatever the name resolves to
/// by then.
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused) = policy.filter(resolved.iter().map(SocketAddr::ip));
            if allowed.is_empty() && !refused.is_empty() {
                return Err(Box::new(NotAllowed {
                    host,
                    literal: false,
                    refused,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The resolver's refusal, if that is why the call failed.
fn refusal_in(error: &reqwest::Error) -> Option<&NotAllowed> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<NotAllowed>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
}

/// Why a call got no answer, for people: the error and its causes, without the URL
/// (reqwest's errors carry it, with whatever credentials its query holds).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    let error = error.without_url();
    let mut text = format!("the call {kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// A local HTTP server answering every request with `response`; the connections it
    /// accepted, and its port.
    async fn server(response: String) -> (Arc<AtomicUsize>, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (accepted, port)
    }

    fn ok() -> String {
        "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".into()
    }

    async fn call(policy: DestinationPolicy, url: &str) -> CallResult {
        let dispatcher = Dispatcher::new(Duration::from_secs(5), policy).unwrap();
        let target = RevalidateTarget {
            url: url.to_owned(),
            secret: SECRET.into(),
            collections: None,
            types: None,
        };
        let site = SiteId::parse("acme").unwrap();
        let body = RevalidateBody::merge(&site, []);
        dispatcher.call(&target, "rv_test", &body, None, 1).await
    }

    fn loopback() -> DestinationPolicy {
        DestinationPolicy::allowing(
            crate::destination::parse_networks("127.0.0.0/8,::1/128").unwrap(),
        )
    }

    #[tokio::test]
    async fn an_address_host_that_is_not_public_is_refused_without_a_connection() {
        let (accepted, port) = server(ok()).await;
        for url in [
            format!("http://127.0.0.1:{port}/r?token=abc"),
            // Other spellings of the same address.
            format!("http://2130706433:{port}/r"),
            format!("http://0x7f.1:{port}/r"),
            format!("http://[::ffff:127.0.0.1]:{port}/r"),
        ] {
            let result = call(DestinationPolicy::public_only(), &url).await;
            assert!(result.not_allowed, "{url}: {result:?}");
            assert_eq!(result.outcome, Outcome::Permanent);
            assert_eq!(result.status, None);
            let error = result.error.unwrap_or_default();
            assert!(error.contains("(loopback) is not public"), "{error}");
            assert!(error.contains("SPOOL_ALLOWED_TARGET_NETWORKS"), "{error}");
            assert!(!error.contains("abc"), "{error}");
        }
        let metadata = call(
            DestinationPolicy::public_only(),
            "http://169.254.169.254/latest/meta-data/",
        )
        .await;
        assert!(metadata.not_allowed, "{metadata:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "nothing was connected to"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_refused_addresses_is_refused_by_the_resolver() {
        let (accepted, port) = server(ok()).await;
        let result = call(
            DestinationPolicy::public_only(),
            &format!("http://localhost:{port}/r?secret=abc"),
        )
        .await;
        assert!(result.not_allowed, "{result:?}");
        assert_eq!(result.outcome, Outcome::Permanent);
        let error = result.error.unwrap_or_default();
        assert!(
            error.contains("the target's host localhost resolves only to addresses that are not public: 127.0.0.1 (loopback)"),
            "{error}"
        );
        assert!(!error.contains("abc"), "{error}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "nothing was connected to"
        );
    }

    #[tokio::test]
    async fn allowed_networks_are_called() {
        let (accepted, port) = server(ok()).await;
        for url in [
            format!("http://127.0.0.1:{port}/r"),
            format!("http://localhost:{port}/r"),
        ] {
            let result = call(loopback(), &url).await;
            assert_eq!(result.outcome, Outcome::Delivered, "{url}: {result:?}");
            assert_eq!(result.status, Some(204));
            assert!(!result.not_allowed);
        }
        assert!(accepted.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (elsewhere, other) = server(ok()).await;
        let (_, port) = server(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.2:{other}/r\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ))
        .await;
        let result = call(loopback(), &format!("http://127.0.0.1:{port}/r")).await;
        assert_eq!(result.status, Some(307), "{result:?}");
        assert_eq!(result.outcome, Outcome::Permanent);
        assert!(!result.not_allowed);
        assert_eq!(
            elsewhere.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn a_failed_call_is_described_without_the_url() {
        // A port nothing listens on: refused at once.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let result = call(
            loopback(),
            &format!("http://user:pw-secret@127.0.0.1:{port}/r?token=abc"),
        )
        .await;
        assert!(
            matches!(result.outcome, Outcome::Retryable { .. }),
            "{result:?}"
        );
        assert!(!result.not_allowed);
        let error = result.error.unwrap_or_default();
        assert!(error.starts_with("the call failed: "), "{error}");
        for secret in ["abc", "pw-secret", "user:"] {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
    }

    #[test]
    fn call_ids_are_stable_and_distinct() {
        let site = SiteId::parse("acme").unwrap();
        let a = call_id(&site, "https://a.example/r", &[1, 2]);
        assert_eq!(a, call_id(&site, "https://a.example/r", &[1, 2]));
        assert!(a.starts_with("rv_") && a.len() == 27);
        assert_ne!(a, call_id(&site, "https://a.example/r", &[1, 3]));
        assert_ne!(a, call_id(&site, "https://b.example/r", &[1, 2]));
        assert_ne!(
            a,
            call_id(
                &SiteId::parse("other").unwrap(),
                "https://a.example/r",
                &[1, 2]
            )
        );
    }
}
