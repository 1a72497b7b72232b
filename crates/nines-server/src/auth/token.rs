//! Tokens and password hashes.
//!
//! A token names its user and expiry, signed (HMAC-SHA256) with the
//! cluster's secret, which AuthEnable put in the replicated state: any
//! member checks any token with no shared session table and no log entry
//! per login (etcd's simple tokens take a Raft round each). Permissions
//! are looked up at use, so a revoked role takes effect at once.
//!
//! Passwords: PBKDF2-HMAC-SHA256, 100,000 rounds, random 16-byte salt,
//! stored as `pbkdf2-sha256$rounds$salt$hash` (hex).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const ROUNDS: u32 = 100_000;
/// Longest token taken from a client: a user name (bounded at 1 KiB) and
/// two numbers, hex-encoded, plus the tag.
pub const MAX_TOKEN_BYTES: usize = 4096;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &[u8], payload: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(payload);
    mac
}

/// A token for `user`, valid until `expires` (unix seconds).
pub fn sign(secret: &[u8], user: &str, expires: u64) -> String {
    let payload = format!("{expires}\n{user}");
    let tag = mac(secret, payload.as_bytes()).finalize().into_bytes();
    format!("{}.{}", hex(payload.as_bytes()), hex(&tag))
}

/// The user a token names, if its signature holds and it has not expired
/// at `now` (unix seconds).
pub fn verify(secret: &[u8], token: &str, now: u64) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES || secret.is_empty() {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let payload = unhex(payload)?;
    let tag = unhex(tag)?;
    // Constant time: a forger learns nothing from how long a check took.
    mac(secret, &payload).verify_slice(&tag).ok()?;
    let text = String::from_utf8(payload).ok()?;
    let (expires, user) = text.split_once('\n')?;
    let expires: u64 = expires.parse().ok()?;
    (now < expires).then(|| user.to_string())
}

/// Password hashes (tens of milliseconds of CPU each) run on blocking
/// threads, at most two at once: a flood of logins or user changes queues
/// here instead of blocking the async workers or taking every core.
static PASSWORD_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs password work `f` off the async workers, within the bound above.
pub async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = PASSWORD_WORK.acquire().await.ok();
    tokio::task::spawn_blocking(f).await
}

/// A slow salted hash of `password`, to store.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let hash = derive(password, &salt, ROUNDS);
    format!("pbkdf2-sha256${ROUNDS}${}${}", hex(&salt), hex(&hash))
}

/// Whether `password` matches a stored hash.
pub fn password_matches(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(rounds), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Some(salt), Some(hash)) = (rounds.parse::<u32>(), unhex(salt), unhex(hash))
    else {
        return false;
    };
    // A stored hash is ours, but bound the work a corrupt one could ask.
    if !(1..=10_000_000).contains(&rounds) {
        return false;
    }
    let derived = derive(password, &salt, rounds);
    use subtle_eq::ct_eq;
    ct_eq(&derived, &hash)
}

fn derive(password: &str, salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, rounds, &mut out);
    out
}

mod subtle_eq {
    /// Equal lengths and bytes, in time independent of where they differ.
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_under_another_secret() {
        let token = sign(&[1; 32], "alice", 1_000);
        assert_eq!(verify(&[1; 32], &token, 999).as_deref(), Some("alice"));
        assert_eq!(verify(&[1; 32], &token, 1_000), None, "expired");
        assert_eq!(verify(&[2; 32], &token, 10), None, "another secret");
        let (payload, tag) = token.split_once('.').unwrap();
        let forged = sign(&[9; 32], "root", 1_000);
        let forged_payload = forged.split_once('.').unwrap().0;
        assert_eq!(
            verify(&[1; 32], &format!("{forged_payload}.{tag}"), 10),
            None
        );
        assert_eq!(verify(&[1; 32], payload, 10), None);
        assert_eq!(verify(&[1; 32], "zz.zz", 10), None);
        assert_eq!(
            verify(&[], &token, 10),
            None,
            "no secret: auth never enabled"
        );
    }

    #[test]
    fn passwords_match_only_themselves() {
        let stored = hash_password("s3cret");
        assert!(password_matches("s3cret", &stored));
        assert!(!password_matches("s3creT", &stored));
        assert_ne!(stored, hash_password("s3cret"), "salted");
        assert!(!password_matches("x", "plain"));
        assert!(!password_matches("x", "pbkdf2-sha256$99999999999$00$00"));
    }
}
