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

/// An argon2id hash (PHC string, salted) of a console password. Refuses passwords shorter
/// than 12 characters.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    if password.chars().count() < 12 {
        return Err("the password must be at least 12 characters".into());
    }
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks a password against a stored hash (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    match argon2::PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Compares two secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn passwords_are_salted_and_checked() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse batterY", &a));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert!(hash_password("short").unwrap_err().contains("12 characters"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
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
