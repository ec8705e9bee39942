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
    mac.update(&signed_content(msg_id, timestamp, body));
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// What both schemes sign: `{id}.{timestamp}.{body}`.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{msg_id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    content
}

/// The receiver's side of both schemes: refuse a stale timestamp, then accept if any
/// signature in the (space-separated) header with this `prefix` passes `check`.
fn verify_any(
    signature_header: &str,
    prefix: &str,
    timestamp: i64,
    now: i64,
    tolerance_secs: i64,
    check: impl Fn(&[u8]) -> bool,
) -> Result<(), VerifyError> {
    if (now - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::Stale(timestamp));
    }
    let found = signature_header
        .split(' ')
        .filter_map(|sig| sig.strip_prefix(prefix))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|sig| check(&sig));
    if found { Ok(()) } else { Err(VerifyError::NoMatch) }
}

/// Why a received webhook was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("timestamp {0} is outside the allowed window")]
    Stale(i64),
    #[error("no signature of this scheme matches")]
    NoMatch,
    #[error("public key must be `whpk_` followed by base64 of 32 bytes")]
    PublicKey,
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
    let k = key(secret)?;
    let content = signed_content(msg_id, timestamp, body);
    verify_any(signature_header, "v1,", timestamp, now, tolerance_secs, |expected| {
        let mut mac = HmacSha256::new_from_slice(&k).expect("HMAC takes any key length");
        mac.update(&content);
        mac.verify_slice(expected).is_ok()
    })
}

/// The optional asymmetric scheme, `v1a`: an ed25519 signature over the same
/// `{id}.{timestamp}.{body}`, made with the operator's signing key (`whsk_` + base64 of the
/// 32-byte seed) and checked by receivers with the public key (`whpk_` + base64), which
/// Broadcast publishes. Receivers then hold no secret at all.
#[derive(Clone)]
pub struct AsymmetricKey(ed25519_dalek::SigningKey);

/// A signing key that is not `whsk_` + base64 of 32 (or 64) bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook signing key must be `whsk_` followed by base64 of a 32-byte ed25519 seed")]
pub struct SigningKeyError;

impl AsymmetricKey {
    pub fn parse(s: &str) -> Result<AsymmetricKey, SigningKeyError> {
        let b64 = s.trim().strip_prefix("whsk_").ok_or(SigningKeyError)?;
        let bytes = STANDARD.decode(b64).map_err(|_| SigningKeyError)?;
        // 64 bytes: seed followed by the public key, as some libraries store it.
        let seed: [u8; 32] = match bytes.len() {
            32 | 64 => bytes[..32].try_into().map_err(|_| SigningKeyError)?,
            _ => return Err(SigningKeyError),
        };
        Ok(AsymmetricKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A key from 32 random bytes supplied by the caller, as `whsk_…`.
    pub fn generate(seed: &[u8; 32]) -> String {
        format!("whsk_{}", STANDARD.encode(seed))
    }

    /// The public key receivers verify with: `whpk_` + base64.
    pub fn public_key(&self) -> String {
        format!("whpk_{}", STANDARD.encode(self.0.verifying_key().as_bytes()))
    }

    /// The `v1a,…` signature for one attempt.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let signature = self.0.sign(&signed_content(msg_id, timestamp, body));
        format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
    }
}

/// Verifies a `v1a` signature with the published `whpk_…` key, as a receiver would.
pub fn verify_asymmetric(
    public_key: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let key = public_key
        .strip_prefix("whpk_")
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        .ok_or(VerifyError::PublicKey)?;
    let content = signed_content(msg_id, timestamp, body);
    verify_any(signature_header, "v1a,", timestamp, now, tolerance_secs, |sig| {
        <[u8; 64]>::try_from(sig)
            .is_ok_and(|b| key.verify_strict(&content, &ed25519_dalek::Signature::from_bytes(&b)).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_v1a_signs_and_verifies() {
        let key = AsymmetricKey::parse(&AsymmetricKey::generate(&[9; 32])).unwrap();
        let public = key.public_key();
        assert!(public.starts_with("whpk_"));
        let sig = key.sign(ID, TS, BODY);
        assert!(sig.starts_with("v1a,"));
        // Sent alongside the v1 HMAC signature; the receiver picks the one it can check.
        let header = format!("{} {sig}", sign(SECRET, ID, TS, BODY).unwrap());
        assert_eq!(verify_asymmetric(&public, ID, TS, BODY, &header, TS, 300), Ok(()));
        assert_eq!(verify(SECRET, ID, TS, BODY, &header, TS, 300), Ok(()));
        assert_eq!(
            verify_asymmetric(&public, ID, TS, br#"{"test": 1}"#, &header, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify_asymmetric(&public, ID, TS, BODY, &header, TS + 400, 300),
            Err(VerifyError::Stale(TS))
        );
        let other = AsymmetricKey::parse(&AsymmetricKey::generate(&[3; 32])).unwrap().public_key();
        assert_eq!(verify_asymmetric(&other, ID, TS, BODY, &header, TS, 300), Err(VerifyError::NoMatch));
        assert_eq!(
            verify_asymmetric("whpk_AAAA", ID, TS, BODY, &header, TS, 300),
            Err(VerifyError::PublicKey)
        );
        assert!(AsymmetricKey::parse("whsk_AAAA").is_err());
        assert!(AsymmetricKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }

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
