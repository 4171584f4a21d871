//! Duplicate detection for publishes a device may receive twice while it
//! is in two groups (a migration). A publish is known by its publisher
//! (the datagram's source address: the router rewrites where a copy goes,
//! never where it came from), its topic and message id (message ids are
//! per client: two publishers' ids collide), or, when the publisher left
//! the id 0 (QoS 0 publishes usually do), by its publisher, topic and
//! payload; the last [`Dedup::new`]`(n)` keys are remembered. Publishers
//! whose QoS 0 payloads repeat within that window should number their
//! publishes (msg id or payload).

use std::{
    collections::{HashSet, VecDeque},
    hash::{BuildHasher, Hash, Hasher},
    net::SocketAddr,
};

/// The last `capacity` publishes seen.
#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Dedup {
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            hasher: Default::default(),
        }
    }

    /// True the first time a publish is seen within the window.
    pub fn first(
        &mut self,
        from: Option<SocketAddr>,
        topic_id_type: u8,
        topic_id: u16,
        msg_id: u16,
        data: &[u8],
    ) -> bool {
        let mut h = self.hasher.build_hasher();
        (from, topic_id_type, topic_id).hash(&mut h);
        if msg_id != 0 {
            (0u8, msg_id).hash(&mut h);
        } else {
            (1u8, data).hash(&mut h);
        }
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_within_the_window() {
        let a: Option<SocketAddr> = Some("198.18.1.2:4000".parse().unwrap());
        let b: Option<SocketAddr> = Some("198.18.1.3:4000".parse().unwrap());
        let mut d = Dedup::new(3);
        assert!(d.first(a, 2, 1, 7, b"x"));
        assert!(!d.first(a, 2, 1, 7, b"y"), "same msg id");
        assert!(d.first(b, 2, 1, 7, b"x"), "another publisher's msg id 7");
        assert!(d.first(a, 2, 2, 7, b"x"), "another topic");
        assert!(d.first(a, 2, 1, 0, b"p"));
        assert!(!d.first(a, 2, 1, 0, b"p"), "same payload, no msg id");
        // Out of the window of 3: forgotten.
        assert!(d.first(a, 2, 1, 7, b"x"));
    }
}
