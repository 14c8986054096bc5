//! Backend ids: indices into `BACKENDS` and `BACKEND_STATS`, unique across
//! services.
//!
//! An id freed by a removed backend may still be named by conntrack and
//! affinity entries until they age out of the LRU maps; handed to a new
//! backend at once, those stale entries would send packets of old
//! connections to it. So ids are handed out round-robin from a cursor: a
//! freed id is reused only after every other free id has been.

use std::collections::BTreeSet;

use balancer_common::maps::MAX_BACKENDS;

#[derive(Debug, Clone)]
pub struct BackendIds {
    used: BTreeSet<u32>,
    /// Where the search for the next free id starts.
    cursor: u32,
}

impl BackendIds {
    /// Ids in `used` are taken; the cursor starts after the highest.
    pub fn new(used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let cursor = used.last().map_or(0, |&max| (max + 1) % MAX_BACKENDS);
        BackendIds { used, cursor }
    }

    /// The next free id at or after the cursor (wrapping), or `None` when
    /// all `MAX_BACKENDS` are taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = (self.cursor..MAX_BACKENDS)
            .chain(0..self.cursor)
            .find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        self.cursor = (id + 1) % MAX_BACKENDS;
        Some(id)
    }

    /// Whether [`BackendIds::allocate`] would find one.
    pub fn has_free(&self) -> bool {
        self.used.len() < MAX_BACKENDS as usize
    }

    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_id_is_reused_last() {
        let mut ids = BackendIds::new([]);
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_eq!((a, b), (0, 1));
        ids.release(a);
        // Every other free id comes first.
        let next: Vec<u32> = (0..MAX_BACKENDS - 1)
            .map(|_| ids.allocate().unwrap())
            .collect();
        assert_eq!(next.first(), Some(&2));
        assert_eq!(next.last(), Some(&0), "the freed id comes last");
        assert_eq!(ids.allocate(), None, "all taken");
    }

    #[test]
    fn starts_after_the_highest_adopted_id() {
        let mut ids = BackendIds::new([3, 7]);
        assert_eq!(ids.allocate(), Some(8));
        let mut ids = BackendIds::new([MAX_BACKENDS - 1]);
        assert_eq!(ids.allocate(), Some(0));
    }
}
