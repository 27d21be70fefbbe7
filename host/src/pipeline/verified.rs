//! Tokens already verified, so a client that sends the same token on every
//! request pays for the signature and the claims once, not each time. An
//! entry is keyed by the whole token text (never by a hash alone, so two
//! tokens cannot share an entry), holds what verification found, and is
//! used only until the token expires. Only verified tokens are kept: a
//! refused token is checked again every time. The cache belongs to one
//! application's verifier; a reload that changes keys builds a new one.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::Identity;

/// Tokens kept at most; past it the cache starts over (a flood of distinct
/// valid tokens costs verification time, never memory).
const MAX_TOKENS: usize = 4_096;

struct Entry {
    identity: Identity,
    /// Unix seconds after which the token is expired: its `exp` plus the
    /// leeway verification allowed.
    until: u64,
}

/// foldhash rather than SipHash: a token is some 150 to 400 bytes, hashed
/// on every request that brings one. Flooding one bucket would take many
/// distinct tokens that hash alike *and* verify, and only the application's
/// key makes tokens that verify; the seed is random per process besides.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: RwLock<HashMap<Box<str>, Entry, foldhash::fast::RandomState>>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VerifiedTokens {
    /// The identity `token` was verified to carry, if it still holds.
    pub fn get(&self, token: &str) -> Option<Identity> {
        let entries = self.entries.read().expect("token cache lock");
        let entry = entries.get(token)?;
        (unix_now() <= entry.until).then(|| entry.identity.clone())
    }

    /// Remembers a verified token until `until` (Unix seconds).
    pub fn insert(&self, token: &str, identity: &Identity, until: u64) {
        let mut entries = self.entries.write().expect("token cache lock");
        if entries.len() >= MAX_TOKENS {
            let now = unix_now();
            entries.retain(|_, e| e.until >= now);
            if entries.len() >= MAX_TOKENS {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Entry {
                identity: identity.clone(),
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(sub: &str) -> Identity {
        Identity {
            subject: Some(sub.into()),
            tenant: None,
            claims: "{}".into(),
        }
    }

    #[test]
    fn entries_hold_until_they_expire_and_only_for_their_exact_token() {
        let cache = VerifiedTokens::default();
        let now = unix_now();
        cache.insert("a.b.c", &identity("ada"), now + 60);
        cache.insert("a.b.d", &identity("bob"), now - 1);
        assert_eq!(cache.get("a.b.c").unwrap().subject.as_deref(), Some("ada"));
        assert!(cache.get("a.b.d").is_none(), "expired");
        assert!(cache.get("a.b.").is_none());
        assert!(cache.get("a.b.cc").is_none());
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let cache = VerifiedTokens::default();
        let until = unix_now() + 60;
        for i in 0..(MAX_TOKENS + 10) {
            cache.insert(&format!("t{i}"), &identity("x"), until);
        }
        assert!(cache.entries.read().unwrap().len() <= MAX_TOKENS);
        assert!(cache.get(&format!("t{}", MAX_TOKENS + 9)).is_some());
    }
}
