//! API tokens and signed unsubscribe links.
//!
//! API tokens are 256-bit random strings shown once; only their SHA-256 is stored (a slow
//! password hash adds nothing for a high-entropy token, and a fast one keeps every request
//! cheap). Unsubscribe tokens are `<contact id>.<HMAC-SHA256(link_secret, contact id)>`, so a
//! link works without a database lookup table and cannot be forged for another contact.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new API token: `bct_` + 43 characters of base64url (32 random bytes).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("bct_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps for a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 24 random bytes for a webhook secret.
pub fn random_secret_bytes() -> [u8; 24] {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn mac(key: &str, data: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    m.update(b"unsubscribe:");
    m.update(data.as_bytes());
    m
}

/// The token in a contact's unsubscribe link.
pub fn unsubscribe_token(key: &str, contact_id: &str) -> String {
    let sig = mac(key, contact_id).finalize().into_bytes();
    format!("{contact_id}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The contact id an unsubscribe token was made for, if the signature is valid.
pub fn verify_unsubscribe_token(key: &str, token: &str) -> Option<String> {
    let (id, sig) = token.rsplit_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    mac(key, id).verify_slice(&sig).ok()?;
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("bct_") && a.len() == 47, "{a}");
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a).len(), 64);
    }

    #[test]
    fn unsubscribe_tokens_cannot_be_forged() {
        let key = "k".repeat(32);
        let t = unsubscribe_token(&key, "con_abc");
        assert_eq!(verify_unsubscribe_token(&key, &t).as_deref(), Some("con_abc"));
        let forged = t.replace("con_abc", "con_xyz");
        assert_eq!(verify_unsubscribe_token(&key, &forged), None);
        assert_eq!(verify_unsubscribe_token(&"other".repeat(8), &t), None);
        assert_eq!(verify_unsubscribe_token(&key, "garbage"), None);
    }
}
