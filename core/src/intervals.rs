//! Sets of item ranges: what a divisible job's sink holds, counted by items rather than by
//! chunks.
//!
//! An [`IntervalSet`] keeps disjoint, non-adjacent half-open ranges `[start, end)` in order,
//! so its size grows with the number of separate pieces held (at most the number of chunks
//! handed out), never with the number of items. Inserting a range that overlaps what is
//! held (a chunk redone after its worker was thought dead, a duplicate result) adds only the
//! items not yet held and says how many.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent, ordered half-open ranges of item indices.
///
/// Kept in a B-tree by start, so inserting a range costs O(log n) plus the pieces it
/// merges: a peer that sends a hundred thousand one-item ranges costs a hundred thousand
/// logarithmic steps, not a quadratic shuffle of a vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// Start to end of each piece.
    ranges: BTreeMap<u64, u64>,
    covered: u64,
}

impl IntervalSet {
    pub fn new() -> IntervalSet {
        IntervalSet::default()
    }

    /// Adds `range`; returns how many of its items were not held before (0 for a range
    /// already held in full, or an empty one).
    pub fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        // The held pieces that touch or overlap `range` are merged with it into one: the
        // piece that starts at or before its start (if it reaches it), and every piece
        // that starts within it or right at its end.
        let mut merged = range.clone();
        let mut already = 0;
        if let Some((&a, &b)) = self.ranges.range(..=range.start).next_back() {
            if b >= range.start {
                merged.start = a;
                merged.end = merged.end.max(b);
                already += overlap(&(a..b), &range);
                self.ranges.remove(&a);
            }
        }
        while let Some((&a, &b)) = self.ranges.range(range.start..=range.end).next() {
            merged.end = merged.end.max(b);
            already += overlap(&(a..b), &range);
            self.ranges.remove(&a);
        }
        self.ranges.insert(merged.start, merged.end);
        let new = (range.end - range.start) - already;
        self.covered += new;
        new
    }

    /// Whether every item of `range` is held (an empty range is).
    pub fn contains_all(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        self.ranges
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &end)| range.end <= end)
    }

    /// Items held.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Separate pieces held: the set's size.
    pub fn pieces(&self) -> usize {
        self.ranges.len()
    }

    /// The held ranges, in order.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges.iter().map(|(&a, &b)| a..b).collect()
    }

    /// The ranges of `0..total` not held, in order: what is left to hand out.
    pub fn gaps(&self, total: u64) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for (&start, &end) in &self.ranges {
            if start >= total {
                break;
            }
            if start > at {
                gaps.push(at..start);
            }
            at = at.max(end);
        }
        if at < total {
            gaps.push(at..total);
        }
        gaps
    }
}

/// Items two ranges share.
fn overlap(a: &Range<u64>, b: &Range<u64>) -> u64 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overlaps_count_once_and_neighbours_merge() {
        let mut s = IntervalSet::new();
        assert_eq!(s.insert(10..20), 10);
        assert_eq!(s.insert(30..40), 10);
        assert_eq!(s.insert(15..35), 10, "only 20..30 is new");
        assert_eq!(s.ranges(), vec![Range { start: 10, end: 40 }]);
        assert_eq!(s.insert(40..45), 5, "adjacent: merged");
        assert_eq!(s.pieces(), 1);
        assert_eq!(s.insert(12..13), 0, "a duplicate adds nothing");
        assert!(s.contains_all(10..45) && !s.contains_all(9..11));
        assert_eq!(s.gaps(50), vec![0..10, 45..50]);
        assert_eq!(s.insert(5..5), 0);
    }

    proptest! {
        /// Against a bit per item: any order of chunks, overlaps and duplicates gives the same
        /// items held, each counted once, in disjoint non-adjacent ordered pieces no more
        /// numerous than the chunks inserted.
        #[test]
        fn holds_exactly_the_items_inserted(chunks in proptest::collection::vec((0u64..500, 0u64..60), 0..80)) {
            let mut set = IntervalSet::new();
            let mut bits = vec![false; 600];
            let mut counted = 0;
            for (i, &(start, len)) in chunks.iter().enumerate() {
                let range = start..start + len;
                let before = bits.iter().filter(|&&b| b).count() as u64;
                range.clone().for_each(|x| bits[x as usize] = true);
                let after = bits.iter().filter(|&&b| b).count() as u64;
                let new = set.insert(range);
                prop_assert_eq!(new, after - before);
                counted += new;
                prop_assert!(set.pieces() <= i + 1);
            }
            prop_assert_eq!(set.covered(), counted);
            for w in set.ranges().windows(2) {
                prop_assert!(w[0].end < w[1].start, "disjoint and not adjacent: {:?}", w);
            }
            for x in 0..600u64 {
                prop_assert_eq!(set.contains_all(x..x + 1), bits[x as usize]);
            }
            let gaps: u64 = set.gaps(600).iter().map(|g| g.end - g.start).sum();
            prop_assert_eq!(gaps + set.covered(), 600);
        }
    }
}
