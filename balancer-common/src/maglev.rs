//! Maglev consistent hashing (Eisenbud et al., NSDI '16), with weights.
//!
//! The table is a pure function of the backend set and the table size:
//! [`build`] orders the backends by identity (address, port, family) and
//! each backend's permutation of the `M` slots is seeded from its identity,
//! so every gateway given the same set computes the same table, whatever
//! order the backends were listed or added in, and whatever tables came
//! before. Nothing local (backend ids, the previous table) takes part.
//!
//! In turn, backends claim their next free slot; weights give a backend
//! `weight / max_weight` turns per round, so its share of the table is its
//! share of the total weight. Userspace builds the table; the kernel only
//! indexes it with [`crate::hash::slot`].
//!
//! There is no minimal-disruption rebuild from the previous table: its
//! result would depend on history (the order of changes, restarts), so two
//! gateways reaching one set by different paths would disagree. A fresh
//! build moves somewhat more than the ideal share of slots: when one
//! backend joins 3 in a 65537-slot table, 0.2503 of the slots against the
//! ideal 1/4; joining 100, 0.0157 against 0.0099 (the tests print these).
//! Only clients without an affinity entry follow a moved slot: the kernel
//! looks a client's affinity entry up before the table, so a known client
//! stays on its backend while that backend is up.

use crate::hash::xxh32_words;

/// What the table needs to know about one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// A stable identity: the backend's address words, port and family.
    pub identity: [u32; 6],
    /// 0 keeps the backend out of the table.
    pub weight: u32,
}

impl MaglevBackend {
    /// The order backends take their turns in: by address (its bytes in
    /// network order, as `to_words` stores them), then port, then family,
    /// then weight (so even a set listing one identity twice orders alike).
    fn order_key(&self) -> ([u8; 16], u32, u32, u32) {
        let mut address = [0u8; 16];
        for (i, w) in self.identity[..4].iter().enumerate() {
            address[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        (address, self.identity[4], self.identity[5], self.weight)
    }
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
///
/// The same set of backends in any order gives the same backend (by
/// identity) in every slot: backends take their turns in identity order,
/// not in the order of `backends`.
pub fn build(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    assert!(m >= 2, "Maglev table size must be at least 2");
    let mut live: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    live.sort_by_key(|&i| backends[i].order_key());
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

    /// The table as identities: what decides where a client goes,
    /// whatever positions the backends had in the input.
    fn identities(backends: &[MaglevBackend], m: u32) -> Vec<[u32; 6]> {
        build(backends, m)
            .iter()
            .map(|&i| backends[i as usize].identity)
            .collect()
    }

    /// A deterministic shuffle (xorshift), so a failure reproduces.
    fn shuffled(backends: &[MaglevBackend], seed: u32) -> Vec<MaglevBackend> {
        let mut v = backends.to_vec();
        let mut x = seed | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.swap(i, x as usize % (i + 1));
        }
        v
    }

    #[test]
    fn the_same_set_in_any_order_gives_the_identical_table() {
        for n in [2u32, 4, 10, 100] {
            let b: Vec<_> = (0..n).map(|i| backend(i, 1 + i % 3)).collect();
            let want = identities(&b, M);
            let mut reversed = b.clone();
            reversed.reverse();
            assert_eq!(identities(&reversed, M), want, "n={n}: reversed");
            for seed in 1..20 {
                assert_eq!(
                    identities(&shuffled(&b, seed), M),
                    want,
                    "n={n}: shuffle {seed}"
                );
            }
        }
    }

    /// The daemon's list of a service's backends after a history of
    /// changes: config order, then `backend add`s appended, removals taken
    /// out, weights set in place (as `state.rs` keeps them).
    /// One change: `a`dd, `r`emove, set `w`eight.
    type Change = (char, MaglevBackend);

    fn replay(config: &[MaglevBackend], history: &[Change]) -> Vec<MaglevBackend> {
        let mut list = config.to_vec();
        for &(op, b) in history {
            match op {
                'a' => list.push(b),
                'r' => list.retain(|x| x.identity != b.identity),
                'w' => {
                    for x in list.iter_mut().filter(|x| x.identity == b.identity) {
                        x.weight = b.weight;
                    }
                }
                _ => unreachable!(),
            }
        }
        list
    }

    #[test]
    fn different_histories_to_the_same_set_give_the_identical_table() {
        let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|i| backend(i, 1));
        let set = [a, b, c, d];
        let want = identities(&set, M);
        let histories: [(&[MaglevBackend], Vec<Change>); 5] = [
            // Gateway 2 started later with D in its config; gateway 1 got
            // it by `backend add`.
            (&[a, b, c], vec![('a', d)]),
            (&[d, c, b, a], vec![]),
            // E came and went; B was removed and added back (to the end).
            (&[a, b, c], vec![('a', e), ('a', d), ('r', e)]),
            (&[a, b, c, d], vec![('r', b), ('a', b)]),
            // A weight went to 3 and back.
            (&[a, b, c, d], vec![('w', backend(3, 3)), ('w', c)]),
        ];
        for (i, (config, history)) in histories.iter().enumerate() {
            let list = replay(config, history);
            assert_eq!(identities(&list, M), want, "history {i}");
            assert_eq!(identities(&list, 251), identities(&set, 251), "history {i}");
        }
    }

    #[test]
    fn a_removed_then_readded_backend_gives_the_original_table_back() {
        let set: Vec<_> = (0..10).map(|i| backend(i, 1 + i % 2)).collect();
        let original = identities(&set, M);
        for gone in [0usize, 4, 9] {
            let mut list = set.clone();
            let b = list.remove(gone);
            assert_ne!(
                identities(&list, M),
                original,
                "a removal changes the table"
            );
            list.push(b);
            assert_eq!(identities(&list, M), original, "{gone} re-added");
        }
    }

    #[test]
    fn weights_are_honoured_in_any_order() {
        let b: Vec<_> = (0..10).map(|i| backend(i, 1 + i % 4)).collect();
        for seed in [3, 7, 11] {
            assert_within_1pct_of_weight(&shuffled(&b, seed));
        }
    }

    /// Fraction of slots whose backend identity differs.
    fn moved(before: &[MaglevBackend], after: &[MaglevBackend]) -> (f64, Vec<u32>, Vec<u32>) {
        let t1 = build(before, M);
        let t2 = build(after, M);
        let n = t1
            .iter()
            .zip(&t2)
            .filter(|(x, y)| before[**x as usize].identity != after[**y as usize].identity)
            .count();
        (n as f64 / f64::from(M), t1, t2)
    }

    /// Every slot the new backend takes moves (the ideal, 1/(N+1)); a
    /// fresh build also moves some slots between the others. Clients with
    /// an affinity entry do not follow those (the kernel reads affinity
    /// first); new clients do.
    #[test]
    fn adding_one_moves_its_share_and_somewhat_more() {
        for n in [3u32, 10, 100] {
            let before: Vec<_> = (0..n).map(|i| backend(i, 1)).collect();
            let mut after = before.clone();
            after.push(backend(n, 1));
            let (frac, _, t2) = moved(&before, &after);
            let ideal = 1.0 / f64::from(n + 1);
            let new_share = t2.iter().filter(|&&i| i == n).count() as f64 / f64::from(M);
            println!(
                "add one to {n}: a fresh build moves {frac:.4} of slots (ideal 1/(N+1) = {ideal:.4}, \
                 {:.2}x), new backend's share {new_share:.4}",
                frac / ideal
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
    fn removing_one_moves_its_slots_and_somewhat_more() {
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
                "remove one of {n}: a fresh build moves {frac:.4} of slots, its own share was {its_share:.4}"
            );
            assert!(frac >= its_share, "n={n}");
            assert!(
                frac <= its_share * 1.5 + 0.01,
                "n={n}: moved {frac:.4}, its share {its_share:.4}"
            );
        }
    }

    /// A weight change gives the backend its new share; the slots that
    /// move are at least the share's change, and a fresh build moves some
    /// between the others as well.
    #[test]
    fn a_weight_change_gives_the_new_share() {
        for n in [3u32, 10] {
            for (from, to) in [(1u32, 3u32), (3, 1)] {
                let before: Vec<_> = (0..n)
                    .map(|i| backend(i, if i == 0 { from } else { 2 }))
                    .collect();
                let mut after = before.clone();
                after[0].weight = to;
                let (frac, t1, t2) = moved(&before, &after);
                let share = |t: &[u32]| t.iter().filter(|&&i| i == 0).count() as f64 / f64::from(M);
                let ideal = (share(&t1) - share(&t2)).abs();
                println!(
                    "weight {from} -> {to} among {n}: a fresh build moves {frac:.4} of slots, its share changed by {ideal:.4}"
                );
                assert!(frac >= ideal, "n={n} {from}->{to}");
                assert_within_1pct_of_weight(&after);
            }
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(655373) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(655371));
    }
}
