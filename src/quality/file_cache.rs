//! Recently checked files by content. What a file's check finds depends only on its bytes, and
//! many files repeat across nodes and reconciles (package `__init__`s, `__main__.py`, `py.typed`
//! depend only on the names), so a small cache saves much of the parsing. Hits compare
//! the full content: no hash collision can return another file's result.
//!
//! Two generations bound it by bytes: new entries go into `hot`; when `hot` is full it becomes
//! `cold` (the old `cold` is dropped) and a hit in `cold` moves back into `hot`. Files checked
//! again and again so stay while one-off files age out, without the bookkeeping of a strict LRU.

use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of file content one generation holds (two at most are alive): the distinct files of
/// about ten nodes, small next to the controller's 64 MiB memory budget.
pub const GENERATION_BYTES: usize = 512 << 10;

pub struct FileCache<T> {
    hot: Generation<T>,
    cold: Generation<T>,
    generation_bytes: usize,
}

/// A file's content and what its check found.
type Entry<T> = (Arc<[u8]>, T);

/// Content hash → every file with that hash, and the bytes held.
struct Generation<T> {
    entries: HashMap<u64, Vec<Entry<T>>>,
    bytes: usize,
}

impl<T> Default for Generation<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<T> Generation<T> {
    fn get(&self, key: u64, bytes: &[u8]) -> Option<&T> {
        self.entries
            .get(&key)?
            .iter()
            .find(|(b, _)| &**b == bytes)
            .map(|(_, r)| r)
    }

    fn take(&mut self, key: u64, bytes: &[u8]) -> Option<Entry<T>> {
        let files = self.entries.get_mut(&key)?;
        let i = files.iter().position(|(b, _)| &**b == bytes)?;
        let hit = files.swap_remove(i);
        if files.is_empty() {
            self.entries.remove(&key);
        }
        self.bytes -= hit.0.len();
        Some(hit)
    }

    fn put(&mut self, key: u64, content: Arc<[u8]>, result: T) {
        self.bytes += content.len();
        self.entries.entry(key).or_default().push((content, result));
    }
}

impl<T: Clone> FileCache<T> {
    pub fn new(generation_bytes: usize) -> Self {
        Self {
            hot: Generation::default(),
            cold: Generation::default(),
            generation_bytes,
        }
    }

    /// The result cached for exactly these bytes (`key` is their hash).
    pub fn lookup(&mut self, key: u64, bytes: &[u8]) -> Option<T> {
        if let Some(hit) = self.hot.get(key, bytes) {
            return Some(hit.clone());
        }
        let (content, result) = self.cold.take(key, bytes)?;
        self.insert(key, content, result.clone());
        Some(result)
    }

    pub fn insert(&mut self, key: u64, content: Arc<[u8]>, result: T) {
        if self.hot.bytes + content.len() > self.generation_bytes {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.hot.put(key, content, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize) -> Arc<[u8]> {
        format!("{n:0100}").into_bytes().into()
    }

    #[test]
    fn a_file_checked_again_and_again_outlives_a_stream_of_one_off_files() {
        let mut cache = FileCache::new(1_000);
        let shared = file(0);
        cache.insert(0, shared.clone(), "shared");
        for n in 1..1_000 {
            assert_eq!(cache.lookup(0, &shared), Some("shared"), "after {n} others");
            cache.insert(n as u64, file(n), "once");
        }
        // A one-off file from long ago has been dropped; held bytes stay within two generations.
        assert_eq!(cache.lookup(1, &file(1)), None);
        assert!(cache.hot.bytes <= 1_000 && cache.cold.bytes <= 1_000);
    }

    #[test]
    fn a_hash_collision_never_returns_another_files_result() {
        let mut cache = FileCache::new(1_000);
        cache.insert(7, file(1), "one");
        assert_eq!(cache.lookup(7, &file(2)), None);
        cache.insert(7, file(2), "two");
        assert_eq!(cache.lookup(7, &file(1)), Some("one"));
        assert_eq!(cache.lookup(7, &file(2)), Some("two"));
    }
}
