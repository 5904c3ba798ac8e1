//! A short-lived, bounded, in-process memory of API keys that verified, so that a busy client does
//! not cost a database round trip per request.
//!
//! Entries are found by the SHA-256 of the whole presented key, never by the key itself: the
//! process keeps no plaintext secret, and only a caller holding the exact key finds its entry (a
//! wrong secret has another fingerprint and goes to the database). Failures are not remembered,
//! so a key works as soon as it is created. A key revoked through the same [`crate::ApiKeys`] is
//! forgotten at once; one revoked elsewhere (another process, plain SQL) keeps working here
//! until its entry expires, i.e. for at most the TTL.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::Principal;

/// What the cache is keyed by. Being a SHA-256 output of a key with a 256-bit secret, it needs
/// no constant-time handling: equal fingerprints mean the caller already holds the key.
type Fingerprint = [u8; 32];

pub(crate) struct VerifiedKeys {
    ttl: Duration,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Fingerprint, Entry>,
    /// Bumped by every [`VerifiedKeys::forget`]. A verification notes it before reading the
    /// database and caches its result only if it is unchanged, so a read that raced with a
    /// revocation cannot put the revoked key back.
    revocations: u64,
}

/// The revocation count a verification saw before reading the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

struct Entry {
    key_id: String,
    principal: Principal,
    expires: Instant,
}

impl VerifiedKeys {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        VerifiedKeys {
            ttl,
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn fingerprint(presented: &str) -> Fingerprint {
        // Domain-separated, so a fingerprint is never equal to a stored secret hash.
        let mut hasher = Sha256::new();
        hasher.update(b"lily-auth verified key cache\0");
        hasher.update(presented.as_bytes());
        hasher.finalize().into()
    }

    /// To call before reading the database for a key that may then be inserted.
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.lock().revocations)
    }

    pub(crate) fn get(&self, fingerprint: &Fingerprint, now: Instant) -> Option<Principal> {
        let entries = &mut self.lock().entries;
        match entries.get(fingerprint) {
            Some(entry) if entry.expires > now => Some(entry.principal.clone()),
            Some(_) => {
                entries.remove(fingerprint);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(
        &self,
        fingerprint: Fingerprint,
        key_id: &str,
        principal: Principal,
        seen: Generation,
        now: Instant,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.lock();
        if state.revocations != seen.0 {
            // A key was revoked since this one was read; it may have been this one.
            return;
        }
        let entries = &mut state.entries;
        if entries.len() >= self.capacity && !entries.contains_key(&fingerprint) {
            entries.retain(|_, entry| entry.expires > now);
            // Still full of live entries: drop an arbitrary one. Which one does not matter for
            // correctness, only for the hit rate, and a full cache is already the unusual case.
            if entries.len() >= self.capacity {
                if let Some(victim) = entries.keys().next().copied() {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(
            fingerprint,
            Entry {
                key_id: key_id.to_owned(),
                principal,
                expires: now + self.ttl,
            },
        );
    }

    /// Drops every entry of `key_id` (after a revocation).
    /// Call after the revocation is committed.
    pub(crate) fn forget(&self, key_id: &str) {
        let mut state = self.lock();
        state.revocations += 1;
        state.entries.retain(|_, entry| entry.key_id != key_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is still consistent (every
        // operation is a single insert/remove/retain/increment), so a poisoned lock is safe to
        // keep using.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Method, Scope};

    fn principal(key_id: &str) -> Principal {
        Principal {
            subject: format!("key:{key_id}"),
            tenant_id: "acme".to_owned(),
            scopes: [Scope::AssetsRead].into(),
            via: Method::ApiKey,
        }
    }

    #[test]
    fn hit_until_expiry() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        let fp = VerifiedKeys::fingerprint("lily_aaaaaaaaaaaa_secret");
        cache.insert(
            fp,
            "aaaaaaaaaaaa",
            principal("aaaaaaaaaaaa"),
            cache.generation(),
            t0,
        );
        assert_eq!(
            cache.get(&fp, t0 + Duration::from_secs(29)),
            Some(principal("aaaaaaaaaaaa"))
        );
        assert_eq!(cache.get(&fp, t0 + Duration::from_secs(30)), None);
        assert_eq!(cache.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn another_presented_key_misses() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        cache.insert(
            VerifiedKeys::fingerprint("lily_aaaaaaaaaaaa_right"),
            "aaaaaaaaaaaa",
            principal("aaaaaaaaaaaa"),
            cache.generation(),
            t0,
        );
        let wrong = VerifiedKeys::fingerprint("lily_aaaaaaaaaaaa_wrong");
        assert_eq!(cache.get(&wrong, t0), None);
    }

    #[test]
    fn bounded() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        for i in 0..10 {
            let key_id = format!("key{i:09}");
            cache.insert(
                VerifiedKeys::fingerprint(&key_id),
                &key_id,
                principal(&key_id),
                cache.generation(),
                t0,
            );
            assert!(cache.len() <= 3);
        }
        // The newest entry always gets in.
        assert!(cache
            .get(&VerifiedKeys::fingerprint("key000000009"), t0)
            .is_some());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 2);
        let t0 = Instant::now();
        let live = VerifiedKeys::fingerprint("live");
        cache.insert(
            VerifiedKeys::fingerprint("old"),
            "old",
            principal("old"),
            cache.generation(),
            t0,
        );
        cache.insert(
            live,
            "live",
            principal("live"),
            cache.generation(),
            t0 + Duration::from_secs(20),
        );
        let later = t0 + Duration::from_secs(35);
        cache.insert(
            VerifiedKeys::fingerprint("new"),
            "new",
            principal("new"),
            cache.generation(),
            later,
        );
        assert!(cache.get(&live, later).is_some(), "the live entry was kept");
    }

    #[test]
    fn forget_drops_a_key() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        let fp = VerifiedKeys::fingerprint("a");
        cache.insert(
            fp,
            "aaaaaaaaaaaa",
            principal("aaaaaaaaaaaa"),
            cache.generation(),
            t0,
        );
        cache.insert(
            VerifiedKeys::fingerprint("b"),
            "bbbbbbbbbbbb",
            principal("bbbbbbbbbbbb"),
            cache.generation(),
            t0,
        );
        cache.forget("aaaaaaaaaaaa");
        assert_eq!(cache.get(&fp, t0), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_read_that_raced_with_a_revocation_is_not_cached() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        let fp = VerifiedKeys::fingerprint("a");
        let seen = cache.generation();
        // The database said "valid", then the key was revoked, then the result came back.
        cache.forget("aaaaaaaaaaaa");
        cache.insert(fp, "aaaaaaaaaaaa", principal("aaaaaaaaaaaa"), seen, t0);
        assert_eq!(cache.get(&fp, t0), None);
        // A read started after the revocation is cached as usual.
        cache.insert(
            fp,
            "aaaaaaaaaaaa",
            principal("aaaaaaaaaaaa"),
            cache.generation(),
            t0,
        );
        assert!(cache.get(&fp, t0).is_some());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = VerifiedKeys::new(Duration::from_secs(30), 0);
        let fp = VerifiedKeys::fingerprint("a");
        cache.insert(fp, "a", principal("a"), cache.generation(), Instant::now());
        assert_eq!(cache.len(), 0);
    }
}
