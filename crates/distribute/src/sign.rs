//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! Each request carries `webhook-id` (the delivery id, the same on every retry so receivers
//! can de-duplicate), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The key is the
//! base64 part of the endpoint's `whsec_…` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A secret that is not `whsec_` + base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook secret must be `whsec_` followed by base64 (got {0} characters that do not decode)")]
pub struct SecretError(pub usize);

fn key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match STANDARD.decode(b64) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(SecretError(secret.len())),
    }
}

/// Checks that a secret is usable.
pub fn validate_secret(secret: &str) -> Result<(), SecretError> {
    key(secret).map(|_| ())
}

/// A new secret from 24 random bytes supplied by the caller.
pub fn secret_from_bytes(bytes: &[u8; 24]) -> String {
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SecretError> {
    let mut mac = HmacSha256::new_from_slice(&key(secret)?).expect("HMAC takes any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// Why a received webhook was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("timestamp {0} is outside the allowed window")]
    Stale(i64),
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Verifies a received webhook the way a receiver should: constant-time comparison against
/// every `v1,` signature in the (space-separated) header, and a timestamp tolerance.
pub fn verify(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if (now - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::Stale(timestamp));
    }
    let k = key(secret)?;
    for sig in signature_header.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else { continue };
        let Ok(expected) = STANDARD.decode(b64) else { continue };
        let mut mac = HmacSha256::new_from_slice(&k).expect("HMAC takes any key length");
        mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    /// The test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_accepts_ours_and_rejects_tampering() {
        let sig = sign(SECRET, ID, TS, BODY).unwrap();
        assert_eq!(verify(SECRET, ID, TS, BODY, &sig, TS + 10, 300), Ok(()));
        // Several signatures (rotation): any match is enough.
        assert_eq!(verify(SECRET, ID, TS, BODY, &format!("v1,bm9wZQ== {sig}"), TS, 300), Ok(()));
        assert_eq!(verify(SECRET, ID, TS, br#"{"test": 1}"#, &sig, TS, 300), Err(VerifyError::NoMatch));
        assert_eq!(verify(SECRET, "msg_other", TS, BODY, &sig, TS, 300), Err(VerifyError::NoMatch));
        assert_eq!(verify(SECRET, ID, TS, BODY, &sig, TS + 301, 300), Err(VerifyError::Stale(TS)));
        let other = secret_from_bytes(&[7; 24]);
        assert_eq!(verify(&other, ID, TS, BODY, &sig, TS, 300), Err(VerifyError::NoMatch));
    }

    #[test]
    fn secrets() {
        let s = secret_from_bytes(&[1; 24]);
        assert!(s.starts_with("whsec_"));
        assert!(validate_secret(&s).is_ok());
        assert!(validate_secret("whsec_!!!").is_err());
        assert!(validate_secret("whsec_").is_err());
        assert!(sign("whsec_%%", ID, TS, BODY).is_err());
    }
}
