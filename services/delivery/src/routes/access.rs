//! Who may read a site: the site must exist, the caller must hold one of its read tokens
//! (header or `?token=`) unless it is public; browsers from its `cors_origins` may call.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::SystemTime;

use spool_platform::http::bearer_token;
use spool_platform::registry::Lookup;
use spool_proto::signing::SigningKey;
use spool_proto::{Site, SiteId};

use super::AppState;
use crate::error::DeliveryError;
use crate::routes::params::Params;
use crate::subscriber::{self, Keys, Refusal};
use crate::window::Filter;
use jsonwebtoken::Algorithm;

/// The site of a request, or why not.
pub fn site(state: &AppState, site: String) -> Result<Arc<Site>, DeliveryError> {
    let id = SiteId::parse(site).map_err(DeliveryError::InvalidSiteId)?;
    match state.platform.registry.lookup(id.as_str()) {
        Lookup::Found(site) => Ok(site),
        Lookup::Loading => Err(DeliveryError::Unavailable(
            "the site registry is still loading".into(),
        )),
        Lookup::Unknown => Err(DeliveryError::UnknownSite(id.to_string())),
    }
}

const TOKEN_REQUIRED: &str =
    "a read token is required: Authorization: Bearer <token> or ?token=<token>";
const TOKEN_REFUSED: &str = "this token can't read this site";

/// What a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// Preview-only events (drafts) and every item field too.
    pub preview: bool,
    /// The collections its token limits it to (`None` = any).
    pub collections: Option<Vec<String>>,
    /// When its token expires: an open stream ends then, telling the client why.
    pub expires: Option<std::time::SystemTime>,
}

impl Reader {
    /// A visitor: what the site publishes, no expiry.
    const VISITOR: Reader = Reader {
        preview: false,
        collections: None,
        expires: None,
    };

    /// What this reader of `site` gets: the collections it asked for (`?collections=`)
    /// within what its token allows, and drafts if it may see them.
    pub fn filter(&self, site: &Site, params: &Params) -> Result<Filter, DeliveryError> {
        Ok(Filter {
            site: site.id.to_string(),
            collections: self.collections(params.collections()?)?,
            preview: self.preview,
        })
    }

    /// The collections this reader gets, given what it asked for: what it asked, within
    /// what its token allows.
    pub fn collections(
        &self,
        asked: Option<Vec<String>>,
    ) -> Result<Option<Vec<String>>, DeliveryError> {
        let Some(allowed) = &self.collections else {
            return Ok(asked);
        };
        match asked {
            None => Ok(Some(allowed.clone())),
            Some(asked) => match asked.iter().find(|c| !allowed.contains(c)) {
                Some(outside) => Err(DeliveryError::Forbidden(format!(
                    "the subscriber token does not allow collection {outside:?}"
                ))),
                None => Ok(Some(asked)),
            },
        }
    }
}

/// Who the caller is, from `Authorization: Bearer` or `?token=`: a subscriber token (a JWT
/// the site's backend minted: its scope, collections and expiry), one of the site's static
/// read tokens (what visitors see), or nobody (a public site's visitor). Every refusal says
/// why; the token itself is never repeated or logged.
pub async fn authorize(
    state: &AppState,
    site: &Site,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Reader, DeliveryError> {
    let token = bearer_token(headers).or(params.token());
    match token {
        Some(token) if subscriber::looks_like_jwt(token) => {
            let grant = verify_token(state, site, token).await?;
            Ok(Reader {
                preview: grant.preview,
                collections: grant.collections,
                expires: Some(grant.expires),
            })
        }
        _ if site.public => Ok(Reader::VISITOR),
        None => Err(DeliveryError::Unauthorized(TOKEN_REQUIRED)),
        Some(token) if site.accepts_read_token(token) => Ok(Reader::VISITOR),
        Some(_) => Err(DeliveryError::Unauthorized(TOKEN_REFUSED)),
    }
}

/// The site's key for HS256 tokens, if it has one.
fn secret_of(site: &Site) -> Option<SigningKey> {
    site.subscriber_secret
        .as_deref()
        .and_then(|secret| SigningKey::from_secret(secret).ok())
}

/// A subscriber token checked against the site's keys: its `subscriber_secret`, or the key
/// of its JWKS the token names (fetched if need be; a JWKS that can't be read is transient
/// trouble, not the reader's fault).
async fn verify_token(
    state: &AppState,
    site: &Site,
    token: &str,
) -> Result<subscriber::Grant, DeliveryError> {
    let refused = |refusal: Refusal| match refusal {
        Refusal::WrongScope => DeliveryError::Forbidden(refusal.to_string()),
        _ => DeliveryError::TokenRefused(refusal),
    };
    let header = subscriber::header(token).map_err(refused)?;
    let jwks = match (&site.subscriber_jwks_url, header.kid.as_deref()) {
        (Some(url), Some(kid)) if header.alg != Algorithm::HS256 => Some(
            state
                .jwks
                .get(url, kid)
                .await
                .map_err(|e| DeliveryError::Unavailable(e.to_string()))?,
        ),
        _ => None,
    };
    let secret = secret_of(site);
    let keys = Keys {
        secret: secret.as_ref(),
        jwks: jwks.as_deref(),
    };
    subscriber::verify(token, site.id.as_str(), keys, SystemTime::now()).map_err(refused)
}

/// A reader is refused an unknown site exactly as a private site refuses the same
/// credentials (`401`, same message), so that nobody can tell which sites exist by asking.
pub fn hide_unknown(error: DeliveryError, headers: &HeaderMap, params: &Params) -> DeliveryError {
    match error {
        DeliveryError::UnknownSite(site) => match bearer_token(headers).or(params.token()) {
            None => DeliveryError::Unauthorized(TOKEN_REQUIRED),
            // As a site without a subscriber key answers the same token.
            Some(token) if subscriber::looks_like_jwt(token) => {
                match subscriber::verify(token, &site, Keys::default(), SystemTime::now()) {
                    Err(refusal) => DeliveryError::TokenRefused(refusal),
                    Ok(_) => DeliveryError::Unauthorized(TOKEN_REFUSED),
                }
            }
            Some(_) => DeliveryError::Unauthorized(TOKEN_REFUSED),
        },
        other => other,
    }
}

/// Resolves once the reader of `site` with `token` may no longer read it — the site was
/// deleted, made private, or the token rotated out — so an open stream ends at once (its
/// client reconnects and is judged by the new rules). Never resolves otherwise.
pub fn revoked(
    state: &AppState,
    site: SiteId,
    token: Option<String>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let registry = state.platform.registry.clone();
    let mut changes = registry.changes();
    async move {
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            let still = registry
                .get(site.as_str())
                .is_some_and(|site| may_still_read(&site, token.as_deref()));
            if !still {
                metrics::counter!("spool_delivery_streams_revoked_total").increment(1);
                return;
            }
        }
    }
}

/// Does the reader with `token` still have the access it was given? (A subscriber token
/// that expires meanwhile is ended by its own timer, which tells the client why.)
fn may_still_read(site: &Site, token: Option<&str>) -> bool {
    match token {
        Some(token) if subscriber::looks_like_jwt(token) => match subscriber::header(token) {
            Ok(header) if header.alg == Algorithm::HS256 => {
                let secret = secret_of(site);
                let keys = Keys {
                    secret: secret.as_ref(),
                    jwks: None,
                };
                matches!(
                    subscriber::verify(token, site.id.as_str(), keys, SystemTime::now()),
                    Ok(_) | Err(Refusal::Expired)
                )
            }
            // Checked against the JWKS when it was opened; the site still takes such tokens.
            Ok(_) => site.subscriber_jwks_url.is_some(),
            Err(_) => false,
        },
        _ if site.public => true,
        Some(token) => site.accepts_read_token(token),
        None => false,
    }
}

/// The read token a request presented (`Authorization: Bearer`, else `?token=`).
pub fn presented_token(headers: &HeaderMap, params: &Params) -> Option<String> {
    bearer_token(headers).or(params.token()).map(str::to_owned)
}

/// The `Access-Control-Allow-Origin` value for this request, if its `Origin` is allowed.
pub fn allowed_origin(site: &Site, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    site.cors_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then(|| origin.clone())
}

/// Adds the CORS headers of an allowed origin to any answer (errors included, so a page
/// can read why it was refused).
pub fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

/// `OPTIONS`: the CORS preflight of a browser that sends `Authorization` or `Last-Event-ID`.
pub async fn preflight(
    axum::extract::State(state): axum::extract::State<AppState>,
    spool_platform::http::PathParam(site_param): spool_platform::http::PathParam,
    headers: HeaderMap,
) -> Response {
    let refused = || {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        DeliveryError::OriginNotAllowed(origin.to_owned()).into_response()
    };
    let site = match site(&state, site_param) {
        Ok(site) => site,
        // Refused as a site that doesn't list the origin: no telling which sites exist.
        Err(DeliveryError::UnknownSite(_)) => return refused(),
        Err(e) => return e.into_response(),
    };
    let Some(origin) = allowed_origin(&site, &headers) else {
        return refused();
    };
    let response = (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Last-Event-ID, Cache-Control",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response();
    with_cors(response, Some(origin))
}
