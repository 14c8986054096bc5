//! Maglev consistent hashing (Eisenbud et al., NSDI '16), with weights.
//!
//! Each backend walks its own permutation of the `M` slots (derived from its
//! address, so the table does not depend on the order backends were added);
//! in turn, backends claim their next free slot. Weights give a backend
//! `weight / max_weight` turns per round, so its share of the table is its
//! share of the total weight. Userspace builds the table; the kernel only
//! indexes it with [`crate::hash::slot`].

use crate::hash::xxh32_words;

/// What the table needs to know about one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// A stable identity: the backend's address words, port and family.
    pub identity: [u32; 6],
    /// 0 keeps the backend out of the table.
    pub weight: u32,
}

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_5f31; // "ev_1"

/// `(offset, skip)` of a backend's permutation in a table of size `m`.
fn permutation(identity: &[u32; 6], m: u32) -> (u64, u64) {
    let offset = xxh32_words(identity, OFFSET_SEED) % m;
    let skip = xxh32_words(identity, SKIP_SEED) % (m - 1) + 1;
    (u64::from(offset), u64::from(skip))
}

/// The table: `m` entries, each an index into `backends`. Empty when no
/// backend has a weight. `m` must be a prime (see [`is_prime`]) so every
/// permutation visits every slot.
pub fn build(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    assert!(m >= 2, "Maglev table size must be at least 2");
    let live: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let max_weight = live.iter().map(|&i| backends[i].weight).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|&i| permutation(&backends[i].identity, m))
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    let m64 = u64::from(m);
    loop {
        for (k, &i) in live.iter().enumerate() {
            credit[k] += u64::from(backends[i].weight);
            if credit[k] < u64::from(max_weight) {
                continue;
            }
            credit[k] -= u64::from(max_weight);
            let (offset, skip) = perms[k];
            let mut slot = ((offset + next[k] * skip) % m64) as usize;
            while table[slot] != u32::MAX {
                next[k] += 1;
                slot = ((offset + next[k] * skip) % m64) as usize;
            }
            table[slot] = i as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// The next table after a change of the backend set or weights, moving as
/// few slots as possible away from `previous` (the table packets read now):
///
/// - each backend ends with exactly the slot count [`build`] would give it,
///   so shares stay within rounding of the weights;
/// - a backend over its count gives up slots, first those [`build`] gives
///   to someone else; a backend that left gives up all of its slots;
/// - freed slots go to backends under their count, first where [`build`]
///   puts them.
///
/// So removing a backend moves only its own slots, and adding one moves only
/// the slots it takes (its share), and a weight change moves only slots to
/// or from that backend, as many as its share changed by: the Maglev ideal,
/// where a fresh build moves somewhat more. `previous` of another size (or empty) means a fresh
/// build.
pub fn rebuild(previous: &[u32], backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    let canonical = build(backends, m);
    if canonical.is_empty() || previous.len() != m as usize {
        return canonical;
    }
    // Backend indices by position in `backends`; `previous` holds indices of
    // an older list, so translate through the identities' positions.
    let mut target = vec![0u32; backends.len()];
    for &b in &canonical {
        target[b as usize] += 1;
    }
    let mut table: Vec<Option<u32>> = previous
        .iter()
        .map(|&b| {
            (b != u32::MAX && (b as usize) < backends.len() && target[b as usize] > 0).then_some(b)
        })
        .collect();
    let mut count = vec![0u32; backends.len()];
    for b in table.iter().flatten() {
        count[*b as usize] += 1;
    }
    // Over-quota backends give up slots, those canonical gives away first.
    for prefer_canonical_owner_elsewhere in [true, false] {
        for (slot, owner) in table.iter_mut().enumerate() {
            let Some(b) = *owner else { continue };
            let over = count[b as usize] > target[b as usize];
            if over && (!prefer_canonical_owner_elsewhere || canonical[slot] != b) {
                *owner = None;
                count[b as usize] -= 1;
            }
        }
    }
    // Holes go to under-quota backends, where canonical puts them first.
    for (slot, owner) in table.iter_mut().enumerate() {
        let c = canonical[slot];
        if owner.is_none() && count[c as usize] < target[c as usize] {
            *owner = Some(c);
            count[c as usize] += 1;
        }
    }
    let mut needy = 0usize;
    for owner in table.iter_mut().filter(|o| o.is_none()) {
        while count[needy] >= target[needy] {
            needy += 1; // holes and deficits are equal in number
        }
        *owner = Some(needy as u32);
        count[needy] += 1;
    }
    table
        .into_iter()
        .map(|o| o.expect("every slot is filled"))
        .collect()
}

/// Table sizes must be prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;

    fn backend(n: u32, weight: u32) -> MaglevBackend {
        // 198.18.(n/256).(n%256):3000 as address words.
        let addr = u32::from_ne_bytes([198, 18, (n / 256) as u8, (n % 256) as u8]);
        MaglevBackend {
            identity: [addr, 0, 0, 0, 3000, 4],
            weight,
        }
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &b in table {
            counts[b as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / table.len() as f64)
            .collect()
    }

    fn assert_within_1pct_of_weight(backends: &[MaglevBackend]) {
        let table = build(backends, M);
        assert_eq!(table.len(), M as usize);
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        let mut worst = 0f64;
        for (i, share) in shares(&table, backends.len()).iter().enumerate() {
            let want = f64::from(backends[i].weight) / f64::from(total);
            let rel = (share - want).abs() / want;
            worst = worst.max(rel);
            assert!(
                rel <= 0.01,
                "backend {i}: share {share:.5}, weight share {want:.5} ({:.2}% off)",
                rel * 100.0
            );
        }
        println!(
            "{} backends: worst share {:.3}% off its weight share",
            backends.len(),
            worst * 100.0
        );
    }

    #[test]
    fn equal_weights_share_evenly() {
        for n in [3, 10, 100] {
            let b: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            assert_within_1pct_of_weight(&b);
        }
    }

    #[test]
    fn weights_are_honoured() {
        for n in [3, 10, 100] {
            let b: Vec<_> = (0..n).map(|i| backend(i, 1 + i % 4)).collect();
            assert_within_1pct_of_weight(&b);
        }
    }

    #[test]
    fn zero_weight_is_excluded_and_empty_is_empty() {
        let b = [backend(1, 1), backend(2, 0), backend(3, 1)];
        assert!(build(&b, 251).iter().all(|&i| i != 1));
        assert!(build(&[backend(1, 0)], 251).is_empty());
        assert!(build(&[], 251).is_empty());
    }

    #[test]
    fn independent_of_backend_order() {
        let b: Vec<_> = (0..10).map(|i| backend(i, 1)).collect();
        let mut r = b.clone();
        r.reverse();
        let t1 = build(&b, M);
        let t2 = build(&r, M);
        // Same backend (by identity) in each slot, whatever the input order.
        let moved = t1
            .iter()
            .zip(&t2)
            .filter(|(x, y)| b[**x as usize] != r[**y as usize])
            .count();
        assert!(
            moved as f64 / f64::from(M) < 0.01,
            "{moved} slots differ with order"
        );
    }

    /// Fraction of slots whose backend identity differs.
    fn moved(before: &[MaglevBackend], after: &[MaglevBackend]) -> (f64, Vec<u32>, Vec<u32>) {
        let t1 = build(before, M);
        let t2 = build(after, M);
        let n = t1
            .iter()
            .zip(&t2)
            .filter(|(x, y)| before[**x as usize] != after[**y as usize])
            .count();
        (n as f64 / f64::from(M), t1, t2)
    }

    #[test]
    fn adding_one_moves_about_one_over_n_plus_one() {
        for n in [3u32, 10, 100] {
            let before: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            let mut after = before.clone();
            after.push(backend(n, 1));
            let (frac, _, t2) = moved(&before, &after);
            let ideal = 1.0 / f64::from(n + 1);
            // Every slot the new backend took moved (ideal); Maglev moves a
            // little more than that, a few percent of the table at most.
            let new_share = t2.iter().filter(|&&i| i == n).count() as f64 / f64::from(M);
            println!(
                "add one to {n}: moved {frac:.4} of slots (ideal 1/(N+1) = {ideal:.4}), new backend's share {new_share:.4}"
            );
            assert!(
                (new_share - ideal).abs() / ideal < 0.01,
                "n={n}: new backend got {new_share:.4}"
            );
            assert!(
                frac >= ideal * 0.99 && frac <= ideal * 1.5 + 0.01,
                "n={n}: moved {frac:.4}, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn removing_one_moves_about_its_slots_only() {
        for n in [3u32, 10, 100] {
            let before: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            let gone = n / 2;
            let after: Vec<_> = before
                .iter()
                .copied()
                .filter(|b| *b != backend(gone, 1))
                .collect();
            let (frac, t1, _) = moved(&before, &after);
            let its_share = t1.iter().filter(|&&i| i == gone).count() as f64 / f64::from(M);
            println!(
                "remove one of {n}: moved {frac:.4} of slots, its own share was {its_share:.4}"
            );
            assert!(frac >= its_share, "n={n}");
            assert!(
                frac <= its_share * 1.5 + 0.01,
                "n={n}: moved {frac:.4}, its share {its_share:.4}"
            );
        }
    }

    /// `table` (indices into `old`) re-indexed into `new`'s positions, as the
    /// daemon does through backend ids; `u32::MAX` where the backend left.
    fn reindex(table: &[u32], old: &[MaglevBackend], new: &[MaglevBackend]) -> Vec<u32> {
        table
            .iter()
            .map(|&i| {
                new.iter()
                    .position(|b| b.identity == old[i as usize].identity)
                    .map_or(u32::MAX, |p| p as u32)
            })
            .collect()
    }

    /// `before` and `after` tables as identities, and the fraction that differs.
    fn moved_incremental(
        before: &[MaglevBackend],
        after: &[MaglevBackend],
    ) -> (f64, Vec<u32>, Vec<u32>) {
        let t1 = build(before, M);
        let t2 = rebuild(&reindex(&t1, before, after), after, M);
        let n = t1
            .iter()
            .zip(&t2)
            .filter(|(x, y)| before[**x as usize].identity != after[**y as usize].identity)
            .count();
        (n as f64 / f64::from(M), t1, t2)
    }

    #[test]
    fn incremental_removal_moves_only_that_backends_slots() {
        for n in [3u32, 10, 100] {
            let before: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            let gone = n / 2;
            let after: Vec<_> = before
                .iter()
                .copied()
                .filter(|b| *b != backend(gone, 1))
                .collect();
            let (frac, t1, t2) = moved_incremental(&before, &after);
            let its_slots = t1.iter().filter(|&&i| i == gone).count();
            assert_eq!((frac * f64::from(M)).round() as usize, its_slots, "n={n}");
            assert_within_1pct(&after, &t2);
            println!("incremental: remove one of {n}: moved {frac:.4} = exactly its own slots");
        }
    }

    #[test]
    fn incremental_addition_moves_only_the_new_backends_share() {
        for n in [3u32, 10, 100] {
            let before: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            let mut after = before.clone();
            after.push(backend(n, 1));
            let (frac, _, t2) = moved_incremental(&before, &after);
            let new_slots = t2.iter().filter(|&&i| i == n).count();
            assert_eq!((frac * f64::from(M)).round() as usize, new_slots, "n={n}");
            assert!(
                (frac - 1.0 / f64::from(n + 1)).abs() * f64::from(n + 1) < 0.01,
                "n={n}: {frac}"
            );
            assert_within_1pct(&after, &t2);
            println!(
                "incremental: add one to {n}: moved {frac:.4} (ideal {:.4})",
                1.0 / f64::from(n + 1)
            );
        }
    }

    #[test]
    fn incremental_keeps_balance_over_many_changes_and_is_stable() {
        let mut set: Vec<_> = (0..20).map(|i| backend(i, 1 + i % 3)).collect();
        let mut table = build(&set, M);
        for step in 0..30u32 {
            let old = set.clone();
            if step % 3 == 2 {
                set.remove((step as usize * 7) % set.len());
            } else {
                set.push(backend(100 + step, 1 + step % 4));
            }
            table = rebuild(&reindex(&table, &old, &set), &set, M);
            assert_within_1pct(&set, &table);
        }
        assert_eq!(rebuild(&table, &set, M), table, "no change, no move");
        assert_eq!(
            rebuild(&[], &set, M),
            build(&set, M),
            "no previous table: a fresh build"
        );
    }

    /// A weight change moves slots only to or from the changed backend, and
    /// as many as its share changed by: the ideal, where a fresh build
    /// reshuffles slots among the others too.
    #[test]
    fn incremental_weight_change_moves_only_that_backends_share() {
        for n in [3u32, 10, 100] {
            for (from, to) in [(1u32, 3u32), (3, 1), (2, 5), (1, 100), (100, 1)] {
                let before: Vec<_> = (0..n)
                    .map(|i| backend(i, if i == 0 { from } else { 2 }))
                    .collect();
                let mut after = before.clone();
                after[0].weight = to;
                let t1 = build(&before, M);
                let t2 = rebuild(&t1, &after, M);
                let mut moved = 0usize;
                let mut between_others = 0usize;
                for (x, y) in t1.iter().zip(&t2) {
                    if x != y {
                        moved += 1;
                        if *x != 0 && *y != 0 {
                            between_others += 1;
                        }
                    }
                }
                let share = |t: &[u32]| t.iter().filter(|&&i| i == 0).count();
                let ideal = share(&t1).abs_diff(share(&t2));
                println!(
                    "incremental: weight {from} -> {to} among {n}: moved {:.4} of slots = its share's change, none between others",
                    moved as f64 / f64::from(M),
                );
                assert_eq!(between_others, 0, "n={n} {from}->{to}");
                assert_eq!(moved, ideal, "n={n} {from}->{to}");
                assert_within_1pct(&after, &t2);
            }
        }
    }

    fn assert_within_1pct(backends: &[MaglevBackend], table: &[u32]) {
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        for (i, share) in shares(table, backends.len()).iter().enumerate() {
            let want = f64::from(backends[i].weight) / f64::from(total);
            assert!(
                (share - want).abs() / want <= 0.01,
                "backend {i}: {share} vs {want}"
            );
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(655373) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(655371));
    }
}
