//! Short-lived subscriber tokens: JWTs a site's backend mints for its readers, carrying who
//! may see what — HS256 with the site's `subscriber_secret`, or EdDSA / RS256 with a key of
//! the site's JWKS (`subscriber_jwks_url`, chosen by the token's `kid`). No I/O: the JWKS
//! is fetched by [`crate::jwks`].
//!
//! Claims: `site` (must be the site read), `exp` (required), `scope` (`published`: what
//! visitors see; `preview`: drafts and every item field too), optional `sub` and
//! `collections` (the reader is limited to those). `alg: none` and every other algorithm
//! are refused before any key is tried.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use spool_proto::signing::SigningKey;

/// What a token lets its holder read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub preview: bool,
    /// `None` = every collection.
    pub collections: Option<Vec<String>>,
    /// When the token stops being valid (an open stream ends then).
    pub expires: SystemTime,
}

/// Why a token was refused: said to the caller as is (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the subscriber token has expired: ask the site for a new one")]
    Expired,
    #[error("the subscriber token is for another site")]
    WrongSite,
    #[error("the subscriber token's scope must be \"published\" or \"preview\"")]
    WrongScope,
    /// Also what a site without a `subscriber_secret`, or an unknown site, answers: a
    /// caller can't tell those apart.
    #[error("the subscriber token's signature is not valid for this site (another key signed it, or the site takes no subscriber tokens)")]
    BadSignature,
    #[error("the subscriber token must be signed with HS256, EdDSA or RS256")]
    Algorithm,
    /// Its `kid` names no key of the site's JWKS (or it has none).
    #[error("the subscriber token's key id (kid) is not in the site's JWKS")]
    UnknownKey,
    #[error("the subscriber token is malformed or lacks a required claim (site, exp, scope)")]
    Malformed,
}

#[derive(Debug, Deserialize)]
struct Claims {
    site: String,
    exp: u64,
    scope: String,
    #[serde(default)]
    collections: Option<Vec<String>>,
}

/// Does `token` look like a JWT (three base64url parts) rather than a static read token?
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// The keys a site verifies subscriber tokens with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys<'a> {
    /// From `subscriber_secret`, for HS256.
    pub secret: Option<&'a SigningKey>,
    /// The site's JWKS, for EdDSA and RS256.
    pub jwks: Option<&'a JwkSet>,
}

/// The header of a token that looks like a JWT: which algorithm and key it claims.
pub fn header(token: &str) -> Result<Header, Refusal> {
    jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)
}

/// Verifies `token` for `site` with the site's keys (none: the site takes no subscriber
/// tokens, or is unknown), at `now`.
pub fn verify(token: &str, site: &str, keys: Keys<'_>, now: SystemTime) -> Result<Grant, Refusal> {
    let header = header(token)?;
    let key = match header.alg {
        Algorithm::HS256 => {
            let secret = keys.secret.ok_or(Refusal::BadSignature)?;
            DecodingKey::from_secret(secret.as_bytes())
        }
        Algorithm::EdDSA | Algorithm::RS256 => {
            let kid = header.kid.as_deref().ok_or(Refusal::UnknownKey)?;
            let jwk = keys
                .jwks
                .and_then(|set| set.find(kid))
                .ok_or(Refusal::UnknownKey)?;
            // A key published for one algorithm is not used with another.
            if jwk
                .common
                .key_algorithm
                .is_some_and(|alg| algorithm_of(alg) != Some(header.alg))
            {
                return Err(Refusal::Algorithm);
            }
            DecodingKey::from_jwk(jwk).map_err(|_| Refusal::UnknownKey)?
        }
        _ => return Err(Refusal::Algorithm),
    };
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp"]);
    // Expiry is judged below against `now`, with no leeway.
    validation.validate_exp = false;
    let data =
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
            _ => Refusal::Malformed,
        })?;
    let claims = data.claims;
    let expires = UNIX_EPOCH + Duration::from_secs(claims.exp);
    if expires <= now {
        return Err(Refusal::Expired);
    }
    if claims.site != site {
        return Err(Refusal::WrongSite);
    }
    let preview = match claims.scope.as_str() {
        "published" => false,
        "preview" => true,
        _ => return Err(Refusal::WrongScope),
    };
    Ok(Grant {
        preview,
        collections: claims.collections,
        expires,
    })
}

/// The signing algorithm a JWK's `alg` names, among those accepted.
fn algorithm_of(alg: jsonwebtoken::jwk::KeyAlgorithm) -> Option<Algorithm> {
    use jsonwebtoken::jwk::KeyAlgorithm;
    match alg {
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::HS256 => Some(Algorithm::HS256),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn key() -> SigningKey {
        SigningKey::from_secret(SECRET).unwrap()
    }

    fn keys(secret: &SigningKey) -> Keys<'_> {
        Keys {
            secret: Some(secret),
            jwks: None,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn mint(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key().as_bytes()),
        )
        .unwrap()
    }

    fn claims(scope: &str) -> serde_json::Value {
        json!({"sub": "editor-1", "site": "acme", "exp": 1_800_000_060u64, "scope": scope})
    }

    #[test]
    fn a_valid_token_grants_its_scope_and_collections() {
        let grant = verify(&mint(claims("preview")), "acme", keys(&key()), now()).unwrap();
        assert!(grant.preview);
        assert_eq!(grant.collections, None);
        assert_eq!(
            grant.expires,
            UNIX_EPOCH + Duration::from_secs(1_800_000_060)
        );
        let mut c = claims("published");
        c["collections"] = json!(["blog"]);
        let grant = verify(&mint(c), "acme", keys(&key()), now()).unwrap();
        assert!(!grant.preview);
        assert_eq!(grant.collections, Some(vec!["blog".to_string()]));
        assert!(looks_like_jwt(&mint(claims("preview"))));
        assert!(!looks_like_jwt("rk_test_acme_0123456789"));
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let secret = key();
        let verify_at = |token: &str| verify(token, "acme", keys(&secret), now());
        let mut expired = claims("preview");
        expired["exp"] = json!(1_800_000_000u64);
        assert_eq!(verify_at(&mint(expired)), Err(Refusal::Expired));
        let mut other = claims("preview");
        other["site"] = json!("other");
        assert_eq!(verify_at(&mint(other)), Err(Refusal::WrongSite));
        assert_eq!(verify_at(&mint(claims("admin"))), Err(Refusal::WrongScope));
        let mut no_exp = claims("preview");
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(verify_at(&mint(no_exp)), Err(Refusal::Malformed));

        // Tampered: the payload changed after signing.
        let token = mint(claims("published"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = base64_url(&claims("preview").to_string());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(verify_at(&tampered), Err(Refusal::BadSignature));
        // Another key.
        let wrong = encode(
            &Header::new(Algorithm::HS256),
            &claims("preview"),
            &EncodingKey::from_secret(b"another key of enough length!!"),
        )
        .unwrap();
        assert_eq!(verify_at(&wrong), Err(Refusal::BadSignature));
        // `alg: none`, unsigned.
        let none = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"JWT"}"#),
            base64_url(&claims("preview").to_string())
        );
        assert!(matches!(
            verify_at(&none),
            Err(Refusal::Algorithm | Refusal::Malformed)
        ));
        // Another algorithm.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims("preview"),
            &EncodingKey::from_secret(key().as_bytes()),
        )
        .unwrap();
        assert_eq!(verify_at(&hs512), Err(Refusal::Algorithm));
        assert_eq!(verify_at("eyJ.not.ajwt"), Err(Refusal::Malformed));
        assert_eq!(
            verify(&mint(claims("preview")), "acme", Keys::default(), now()),
            Err(Refusal::BadSignature),
            "a site without a subscriber_secret looks like a wrong key"
        );
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
