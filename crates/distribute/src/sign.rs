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
        let mut content = Vec::with_capacity(body.len() + msg_id.len() + 24);
        content.extend_from_slice(format!("{msg_id}.{timestamp}.").as_bytes());
        content.extend_from_slice(body);
        format!("v1a,{}", STANDARD.encode(self.0.sign(&content).to_bytes()))
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
    if (now - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::Stale(timestamp));
    }
    let key: [u8; 32] = public_key
        .strip_prefix("whpk_")
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::NoMatch)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| VerifyError::NoMatch)?;
    let mut content = format!("{msg_id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    for sig in signature_header.split(' ') {
        let Some(b64) = sig.strip_prefix("v1a,") else { continue };
        let Some(bytes) = STANDARD.decode(b64).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            continue;
        };
        if key.verify_strict(&content, &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
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
