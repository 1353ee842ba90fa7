//! Standard Webhooks (<https://www.standardwebhooks.com>) signing and verification, as pure
//! functions: the ingest service verifies the CMS's calls with it and the revalidator signs
//! its own.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far `webhook-timestamp` may be from now, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;
/// Longest accepted `webhook-id`.
pub const MAX_ID_LEN: usize = 256;

const SECRET_PREFIX: &str = "whsec_";

/// An HMAC key decoded from a `whsec_<base64>` secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must start with \"whsec_\"")]
    MissingPrefix,
    #[error("the part after \"whsec_\" is not valid base64")]
    NotBase64,
    #[error("must decode to 16 to 128 bytes, found {0}")]
    BadLength(usize),
}

/// Why a signed request was refused. Each is a 401 for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-id must be 1 to {MAX_ID_LEN} printable ASCII characters without spaces")]
    BadId,
    #[error("webhook-timestamp must be unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from the server's clock (tolerance {1} s)")]
    StaleTimestamp(i64, i64),
    #[error("no webhook-signature matches (expected \"v1,<base64 HMAC-SHA256>\" signed with the site's webhook_secret)")]
    NoMatchingSignature,
}

impl SigningKey {
    pub fn from_secret(secret: &str) -> Result<SigningKey, SecretError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !(16..=128).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// The key's bytes (the base64 after `whsec_`, decoded): what an HS256 token of the
    /// site is signed with.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this can't fail.
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for this call: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }

    /// Verifies the three headers against the body. `now` is unix seconds. Every `v1`
    /// signature in the space-separated list is tried; comparison is in constant time.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let id = id.ok_or(VerifyError::MissingHeader(ID_HEADER))?;
        let timestamp = timestamp.ok_or(VerifyError::MissingHeader(TIMESTAMP_HEADER))?;
        let signatures = signatures.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
        if !is_valid_id(id) {
            return Err(VerifyError::BadId);
        }
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        // Any i64 may come in (from the header, or a clock far off): no overflow here, and
        // a negative tolerance accepts only the exact second.
        let skew = now.saturating_sub(ts);
        if skew.unsigned_abs() > u64::try_from(tolerance_secs).unwrap_or(0) {
            return Err(VerifyError::StaleTimestamp(skew, tolerance_secs));
        }
        let expected = self.mac(id, ts, body);
        let matched = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .any(|tag| expected.clone().verify_slice(&tag).is_ok());
        if matched {
            Ok(())
        } else {
            Err(VerifyError::NoMatchingSignature)
        }
    }
}

/// A `webhook-id` fit to be part of a `Nats-Msg-Id` header: printable ASCII, no spaces.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key() -> SigningKey {
        SigningKey::from_secret(SPEC_SECRET).unwrap()
    }

    #[test]
    fn matches_the_specification_example() {
        assert_eq!(key().sign(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()), SPEC_SIG);
        let ts = SPEC_TS.to_string();
        key()
            .verify(
                Some(SPEC_ID),
                Some(&ts),
                Some(SPEC_SIG),
                SPEC_BODY.as_bytes(),
                SPEC_TS,
                300,
            )
            .unwrap();
    }

    #[test]
    fn accepts_any_of_several_signatures() {
        let ts = SPEC_TS.to_string();
        let sigs = format!("v2,xyz v1,bm90IGl0 {SPEC_SIG}");
        key()
            .verify(
                Some(SPEC_ID),
                Some(&ts),
                Some(&sigs),
                SPEC_BODY.as_bytes(),
                SPEC_TS,
                300,
            )
            .unwrap();
    }

    #[test]
    fn refusals() {
        let k = key();
        let body = SPEC_BODY.as_bytes();
        let ts = SPEC_TS.to_string();
        let v = |id, ts, sig, now| k.verify(id, ts, sig, body, now, 300);
        assert_eq!(
            v(None, Some(&ts), Some(SPEC_SIG), SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v(Some(SPEC_ID), None, Some(SPEC_SIG), SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            v(Some(SPEC_ID), Some(&ts), None, SPEC_TS),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            v(Some("a b"), Some(&ts), Some(SPEC_SIG), SPEC_TS),
            Err(VerifyError::BadId)
        );
        assert_eq!(
            v(Some(SPEC_ID), Some("soon"), Some(SPEC_SIG), SPEC_TS),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            v(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS + 301),
            Err(VerifyError::StaleTimestamp(301, 300))
        );
        assert_eq!(
            v(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS - 301),
            Err(VerifyError::StaleTimestamp(-301, 300))
        );
        assert!(v(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS + 300).is_ok());
        assert_eq!(
            v(Some("msg_other"), Some(&ts), Some(SPEC_SIG), SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            v(Some(SPEC_ID), Some(&ts), Some("v1,"), SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    // Found by fuzz_signature_check_arbitrary: a timestamp this far from `now` made the
    // skew i64::MIN, whose abs() overflowed (a panic in debug builds).
    #[test]
    fn timestamps_at_the_ends_of_i64_are_refused_not_a_panic() {
        let k = key();
        let max = i64::MAX.to_string();
        let min = i64::MIN.to_string();
        for (ts, now) in [(&max, -2), (&max, i64::MIN), (&min, i64::MAX), (&min, 0)] {
            assert!(matches!(
                k.verify(Some(SPEC_ID), Some(ts), Some(SPEC_SIG), b"", now, 300),
                Err(VerifyError::StaleTimestamp(..))
            ));
        }
        let ts = SPEC_TS.to_string();
        assert!(matches!(
            k.verify(
                Some(SPEC_ID),
                Some(&ts),
                Some(SPEC_SIG),
                SPEC_BODY.as_bytes(),
                SPEC_TS + 1,
                -5
            ),
            Err(VerifyError::StaleTimestamp(1, -5))
        ));
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(
            SigningKey::from_secret("MfKQ9r8GKYqrTwjU").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            SigningKey::from_secret("whsec_!!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            SigningKey::from_secret("whsec_YWJj").unwrap_err(),
            SecretError::BadLength(3)
        );
    }

    proptest! {
        #[test]
        fn a_signature_verifies_only_its_own_body(
            id in "[a-zA-Z0-9_]{1,40}", ts in 0i64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
        ) {
            let k = key();
            let sig = k.sign(&id, ts, &body);
            let ts_s = ts.to_string();
            prop_assert!(k.verify(Some(&id), Some(&ts_s), Some(&sig), &body, ts, 300).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip.index(tampered.len());
                tampered[i] ^= 0x01;
                prop_assert_eq!(
                    k.verify(Some(&id), Some(&ts_s), Some(&sig), &tampered, ts, 300),
                    Err(VerifyError::NoMatchingSignature)
                );
            }
        }
    }
}
