//! Who may read a site: the site must exist, the caller must hold one of its read tokens
//! (header or `?token=`) unless it is public; browsers from its `cors_origins` may call.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use spool_platform::http::bearer_token;
use spool_proto::{Site, SiteId};

use super::AppState;
use crate::error::DeliveryError;
use crate::routes::params::Params;

/// The site of a request, or why not.
pub fn site(state: &AppState, site: String) -> Result<Arc<Site>, DeliveryError> {
    let id = SiteId::parse(site).map_err(DeliveryError::InvalidSiteId)?;
    let platform = &state.platform;
    match platform.registry.get(id.as_str()) {
        Some(site) => Ok(site),
        None if !platform.readiness.registry_loaded() => Err(DeliveryError::Unavailable(
            "the site registry is still loading".into(),
        )),
        None => Err(DeliveryError::UnknownSite(id.to_string())),
    }
}

const TOKEN_REQUIRED: &str =
    "a read token is required: Authorization: Bearer <token> or ?token=<token>";
const TOKEN_REFUSED: &str = "this token can't read this site";

/// A read token from `Authorization: Bearer` or `?token=`, unless the site is public.
pub fn authorize(site: &Site, headers: &HeaderMap, params: &Params) -> Result<(), DeliveryError> {
    if site.public {
        return Ok(());
    }
    match bearer_token(headers).or(params.token()) {
        None => Err(DeliveryError::Unauthorized(TOKEN_REQUIRED)),
        Some(token) if site.accepts_read_token(token) => Ok(()),
        Some(_) => Err(DeliveryError::Unauthorized(TOKEN_REFUSED)),
    }
}

/// A reader is refused an unknown site exactly as a private site refuses the same
/// credentials (`401`, same message), so that nobody can tell which sites exist by asking.
pub fn hide_unknown(error: DeliveryError, headers: &HeaderMap, params: &Params) -> DeliveryError {
    match error {
        DeliveryError::UnknownSite(_) => match bearer_token(headers).or(params.token()) {
            None => DeliveryError::Unauthorized(TOKEN_REQUIRED),
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
            let still = registry.get(site.as_str()).is_some_and(|site| {
                site.public
                    || token
                        .as_deref()
                        .is_some_and(|token| site.accepts_read_token(token))
            });
            if !still {
                metrics::counter!("spool_delivery_streams_revoked_total").increment(1);
                return;
            }
        }
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
    axum::extract::Path(site_param): axum::extract::Path<String>,
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
