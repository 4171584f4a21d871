//! The recent load per topic, bucket by bucket, in memory: what the control
//! cycle forecasts from without reading the history store back (a cycle
//! for 10k topics must not re-read millions of rows). Filled from the
//! store when the daemon starts, then from each bucket the daemon writes.

use std::collections::{HashMap, VecDeque};

/// Whether a topic's publishes are load: the router's own `$` topics (the
/// latency probes) are no one's, so they are neither kept here, forecast
/// nor counted against a shard's capacity.
pub fn is_load(topic: &str) -> bool {
    !topic.starts_with('$')
}

/// Messages per bucket per topic (all device groups together) over the
/// last `cap` buckets, aligned: every topic's series has one value per
/// bucket in `starts`.
#[derive(Clone, Debug)]
pub struct LoadSeries {
    bucket: u64,
    cap: usize,
    /// Start (unix seconds) of each bucket kept, ascending, consecutive.
    starts: VecDeque<u64>,
    topics: HashMap<String, VecDeque<f64>>,
}

impl LoadSeries {
    /// Keeps `cap` buckets of `bucket` seconds (both at least 1).
    pub fn new(bucket: u64, cap: usize) -> LoadSeries {
        LoadSeries {
            bucket: bucket.max(1),
            cap: cap.max(1),
            starts: VecDeque::new(),
            topics: HashMap::new(),
        }
    }

    pub fn bucket_secs(&self) -> u64 {
        self.bucket
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Start of the newest bucket held.
    pub fn last_start(&self) -> Option<u64> {
        self.starts.back().copied()
    }

    /// Adds `count` messages of `topic` in the bucket starting at or
    /// before `ts`. Buckets between the newest held and this one read 0
    /// (the daemon was not counting, or nothing was published); a bucket
    /// older than the window is ignored.
    pub fn add(&mut self, ts: u64, topic: &str, count: f64) {
        if !is_load(topic) {
            return;
        }
        let start = ts - ts % self.bucket;
        let Some(i) = self.slot(start) else {
            return;
        };
        let len = self.starts.len();
        let series = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| VecDeque::from(vec![0.0; len]));
        series[i] += count;
    }

    /// Index of the bucket starting at `start`, opening it (and any gap
    /// before it) when it is newer than every bucket held.
    fn slot(&mut self, start: u64) -> Option<usize> {
        let Some(&last) = self.starts.back() else {
            self.push(start);
            return Some(0);
        };
        if start <= last {
            let back = ((last - start) / self.bucket) as usize;
            return (back < self.starts.len()).then(|| self.starts.len() - 1 - back);
        }
        // A gap longer than the window leaves nothing of the old series.
        let gap = (start - last) / self.bucket;
        if gap as usize >= self.cap {
            self.starts.clear();
            self.topics.clear();
            self.push(start);
            return Some(0);
        }
        for k in 1..=gap {
            self.push(last + k * self.bucket);
        }
        Some(self.starts.len() - 1)
    }

    fn push(&mut self, start: u64) {
        self.starts.push_back(start);
        for s in self.topics.values_mut() {
            s.push_back(0.0);
        }
        while self.starts.len() > self.cap {
            self.starts.pop_front();
            for s in self.topics.values_mut() {
                s.pop_front();
            }
        }
    }

    /// Topic names held.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// `topic`'s series over the buckets that ended at or before `now`
    /// (the bucket under way is left out: it is not complete).
    pub fn complete(&self, topic: &str, now: u64) -> Vec<f64> {
        let Some(s) = self.topics.get(topic) else {
            return Vec::new();
        };
        s.iter().take(self.complete_len(now)).copied().collect()
    }

    /// Messages of `topic` in the bucket starting at `start`, if held.
    pub fn at(&self, topic: &str, start: u64) -> Option<f64> {
        let last = *self.starts.back()?;
        if start > last || !start.is_multiple_of(self.bucket) {
            return None;
        }
        let back = ((last - start) / self.bucket) as usize;
        let i = self.starts.len().checked_sub(1 + back)?;
        Some(self.topics.get(topic).map_or(0.0, |s| s[i]))
    }

    /// Buckets held that ended at or before `now`.
    fn complete_len(&self, now: u64) -> usize {
        // Buckets are consecutive: the count follows from the first.
        self.starts.front().map_or(0, |&first| {
            ((now.saturating_sub(first) / self.bucket) as usize).min(self.starts.len())
        })
    }

    /// Messages/s of `topic` over the last complete bucket (read in place:
    /// called per topic per cycle).
    pub fn last_rate(&self, topic: &str, now: u64) -> f64 {
        let n = self.complete_len(now);
        match (self.topics.get(topic), n) {
            (Some(s), 1..) => s[n - 1] / self.bucket as f64,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routers_own_topics_are_not_load() {
        let mut l = LoadSeries::new(10, 4);
        l.add(100, "$probe/1", 5.0);
        assert!(l.is_empty() && l.topics().next().is_none());
        l.add(100, "a", 1.0);
        assert_eq!(l.topics().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn buckets_align_gaps_read_zero_and_the_window_slides() {
        let mut l = LoadSeries::new(10, 4);
        l.add(100, "a", 5.0);
        l.add(105, "a", 1.0);
        l.add(120, "b", 2.0); // 110 is a gap
        assert_eq!(l.len(), 3);
        assert_eq!(l.complete("a", 130), [6.0, 0.0, 0.0]);
        assert_eq!(l.complete("b", 130), [0.0, 0.0, 2.0]);
        // The bucket under way is not complete.
        assert_eq!(l.complete("b", 125), [0.0, 0.0]);
        assert_eq!(l.last_rate("b", 130), 0.2);
        assert_eq!(l.at("b", 120), Some(2.0));
        assert_eq!(l.at("a", 100), Some(6.0));
        assert_eq!(l.at("zz", 100), Some(0.0));
        assert_eq!(
            (l.at("a", 90), l.at("a", 130), l.at("a", 101)),
            (None, None, None)
        );
        // Late counts for a held bucket add up; older ones are dropped.
        l.add(111, "a", 3.0);
        assert_eq!(l.complete("a", 130), [6.0, 3.0, 0.0]);
        l.add(150, "a", 1.0);
        assert_eq!(l.len(), 4);
        assert_eq!(l.last_start(), Some(150));
        // 100 and 110 slid out of the 4-bucket window (120..=150).
        assert_eq!(l.complete("a", 160), [0.0, 0.0, 0.0, 1.0]);
        l.add(100, "a", 9.0);
        assert_eq!(l.complete("a", 160), [0.0, 0.0, 0.0, 1.0]);
        // A gap past the window starts over.
        l.add(10_000, "c", 1.0);
        assert_eq!(l.len(), 1);
        assert!(l.complete("a", 20_000).is_empty());
        assert_eq!(l.complete("c", 20_000), [1.0]);
        assert_eq!(l.topics().count(), 1);
    }
}
