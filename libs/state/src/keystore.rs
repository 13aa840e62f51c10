//! The keys of a [`State`](crate::State), compactly: each key boxed once in a list that
//! only grows, and two hash tables of 4-byte positions into it — by id and by key hash
//! — hashed from the key itself. A million keys cost their boxes plus about 20 bytes of
//! index each, instead of a map slot holding a copy of the id and a second map holding
//! a copy of the hash and of the id again.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use sg_events::KeyId;

use crate::Key;

#[derive(Clone, Default)]
pub(crate) struct KeyStore {
    /// Keys are never removed, so a position stays valid. Boxed so that growing the
    /// list moves pointers: a `Vec<Key>` would copy every key, and hold both copies, each
    /// time it doubles.
    #[allow(clippy::vec_box, reason = "a key is large; growth must not copy them")]
    keys: Vec<Box<Key>>,
    by_id: HashTable<u32>,
    by_hash: HashTable<u32>,
    /// foldhash, randomly seeded per process: see [`crate::Map`].
    hasher: foldhash::fast::RandomState,
}

/// Too many keys to index in 32 bits.
#[derive(Debug)]
pub(crate) struct Full;

impl KeyStore {
    fn at(&self, i: u32) -> Option<&Key> {
        self.keys.get(i as usize).map(|k| &**k)
    }

    fn position(&self, id: &KeyId) -> Option<u32> {
        let h = self.hasher.hash_one(id.as_str());
        self.by_id
            .find(h, |&i| self.at(i).is_some_and(|k| &k.id == id))
            .copied()
    }

    pub(crate) fn get(&self, id: &KeyId) -> Option<&Key> {
        self.at(self.position(id)?)
    }

    pub(crate) fn get_mut(&mut self, id: &KeyId) -> Option<&mut Key> {
        let i = self.position(id)?;
        self.keys.get_mut(i as usize).map(|k| &mut **k)
    }

    pub(crate) fn contains_key(&self, id: &KeyId) -> bool {
        self.position(id).is_some()
    }

    /// The key whose hash is exactly `hash`.
    pub(crate) fn by_hash(&self, hash: &str) -> Option<&Key> {
        let h = self.hasher.hash_one(hash);
        let i = self
            .by_hash
            .find(h, |&i| self.at(i).is_some_and(|k| k.key_hash == hash))?;
        self.at(*i)
    }

    pub(crate) fn contains_hash(&self, hash: &str) -> bool {
        self.by_hash(hash).is_some()
    }

    /// Adds `key`, whose id and hash the caller checked are new.
    pub(crate) fn insert(&mut self, key: Key) -> Result<(), Full> {
        let i = u32::try_from(self.keys.len()).map_err(|_| Full)?;
        let id_hash = self.hasher.hash_one(key.id.as_str());
        let key_hash = self.hasher.hash_one(key.key_hash.as_str());
        self.keys.push(Box::new(key));
        let (keys, hasher) = (&self.keys, &self.hasher);
        let rehash = |j: &u32, f: fn(&Key) -> &str| {
            keys.get(*j as usize).map_or(0, |k| hasher.hash_one(f(k)))
        };
        self.by_id
            .insert_unique(id_hash, i, |j| rehash(j, |k| k.id.as_str()));
        self.by_hash
            .insert_unique(key_hash, i, |j| rehash(j, |k| k.key_hash.as_str()));
        Ok(())
    }

    /// Makes room for `additional` more keys without growing (and rehashing) the
    /// indexes: an index's slot is 4 bytes, so room reserved and not used costs little.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.keys.reserve(additional);
        let (keys, hasher) = (&self.keys, &self.hasher);
        let rehash = |j: &u32, f: fn(&Key) -> &str| {
            keys.get(*j as usize).map_or(0, |k| hasher.hash_one(f(k)))
        };
        self.by_id
            .reserve(additional, |j| rehash(j, |k| k.id.as_str()));
        self.by_hash
            .reserve(additional, |j| rehash(j, |k| k.key_hash.as_str()));
    }

    /// Every key, in the order they were added.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter().map(|k| &**k)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Equal when they hold the same keys, whatever the order they were added in.
impl PartialEq for KeyStore {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.values().all(|k| other.get(&k.id) == Some(k))
    }
}

impl Eq for KeyStore {}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values().map(|k| (&k.id, k)))
            .finish()
    }
}
