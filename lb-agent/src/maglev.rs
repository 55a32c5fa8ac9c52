//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4), pure and I/O-free.
//!
//! Each backend walks its own permutation of the `m` slots (offset and skip derived from a
//! stable key, such as its address) and claims the next free slot when its turn comes. Weights
//! are honoured with credit: every round each backend earns `weight / max_weight` turns, so the
//! heaviest claims one slot per round and the rest in proportion. Because every backend's
//! preference list is fixed, removing or re-weighting one backend moves few other slots.

/// A backend as Maglev sees it: a stable key (its permutation) and a weight in (0, 1].
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub key: u64,
    pub weight: f64,
}

/// Stable 64-bit hash of a backend identity (FNV-1a, then the murmur3 64-bit finaliser so
/// that similar strings spread over the whole range). Fixed forever: changing it would move
/// every flow's origin on upgrade.
pub fn backend_key(identity: &str) -> u64 {
    let mut h = lb_common::hash::fnv1a64(identity.as_bytes(), lb_common::hash::FNV_OFFSET);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Builds a table of `m` slots (m prime). Each slot holds an index into `backends`, or
/// `None` when no backend has a positive weight.
pub fn build(backends: &[Backend], m: u32) -> Vec<Option<u32>> {
    const EMPTY: u32 = u32::MAX;
    let mut table: Vec<u32> = vec![EMPTY; m as usize];
    let max_w = backends
        .iter()
        .map(|b| b.weight)
        .filter(|w| *w > 0.0)
        .fold(0.0f64, f64::max);
    if max_w <= 0.0 {
        return vec![None; m as usize];
    }
    struct State {
        idx: u32,
        /// Next slot of this backend's permutation: (offset + k * skip) mod m, advanced by
        /// one addition and a conditional subtraction (no division per probe).
        pos: u32,
        skip: u32,
        share: f64,
        credit: f64,
    }
    let m64 = u64::from(m);
    let mut states: Vec<State> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0.0)
        .map(|(i, b)| {
            let h2 = b.key.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
            #[expect(clippy::cast_possible_truncation, reason = "values are below m, a u32")]
            State {
                idx: i as u32,
                pos: (b.key % m64) as u32,
                skip: (backend_key_mix(h2) % (m64 - 1) + 1) as u32,
                share: b.weight / max_w,
                credit: 0.0,
            }
        })
        .collect();
    let mut filled: u32 = 0;
    while filled < m {
        for s in &mut states {
            s.credit += s.share;
            while s.credit >= 1.0 && filled < m {
                s.credit -= 1.0;
                loop {
                    let c = s.pos as usize;
                    s.pos += s.skip;
                    if s.pos >= m {
                        s.pos -= m;
                    }
                    if table[c] == EMPTY {
                        table[c] = s.idx;
                        filled += 1;
                        break;
                    }
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
        .into_iter()
        .map(|v| (v != EMPTY).then_some(v))
        .collect()
}

fn backend_key_mix(mut h: u64) -> u64 {
    h ^= h >> 31;
    h = h.wrapping_mul(0x7fb5_d329_728e_a185);
    h ^= h >> 27;
    h = h.wrapping_mul(0x81da_def4_bc2d_d44d);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::MAGLEV_M;

    fn backends(weights: &[f64]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend {
                key: backend_key(&format!("10.1.{}.{}:80", i / 250, i % 250)),
                weight: *w,
            })
            .collect()
    }

    fn shares(table: &[Option<u32>], n: usize) -> Vec<f64> {
        let mut c = vec![0u64; n];
        for s in table.iter().flatten() {
            c[*s as usize] += 1;
        }
        c.iter().map(|x| *x as f64 / table.len() as f64).collect()
    }

    #[test]
    fn every_slot_is_filled() {
        let t = build(&backends(&[1.0, 0.3, 0.7]), MAGLEV_M);
        assert_eq!(t.len(), MAGLEV_M as usize);
        assert!(t.iter().all(Option::is_some));
    }

    #[test]
    fn balance_100_equal_origins_max_over_mean_at_most_1_01() {
        let t = build(&backends(&[1.0; 100]), MAGLEV_M);
        let s = shares(&t, 100);
        let max = s.iter().copied().fold(0.0, f64::max);
        let mean = 1.0 / 100.0;
        let ratio = max / mean;
        println!("maglev balance: 100 equal origins, max/mean slot share = {ratio:.5}");
        assert!(ratio <= 1.01, "max/mean = {ratio}");
    }

    #[test]
    fn weighted_shares_within_half_a_point() {
        let w = [1.0, 0.5, 0.25, 0.75, 0.1];
        let t = build(&backends(&w), MAGLEV_M);
        let s = shares(&t, w.len());
        let total: f64 = w.iter().sum();
        for (i, share) in s.iter().enumerate() {
            let target = w[i] / total;
            let diff = (share - target).abs() * 100.0;
            println!("maglev weights: origin {i} weight {} share {:.3}% target {:.3}% (diff {diff:.3} pt)", w[i], share * 100.0, target * 100.0);
            assert!(diff <= 0.5, "origin {i}: share {share} target {target}");
        }
    }

    #[test]
    fn weights_1_2_3() {
        let t = build(&backends(&[1.0 / 3.0, 2.0 / 3.0, 1.0]), MAGLEV_M);
        let s = shares(&t, 3);
        for (share, target) in s.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((share - target).abs() <= 0.005, "{s:?}");
        }
    }

    #[test]
    fn zero_weight_gets_no_slots_and_all_zero_gives_empty_table() {
        let t = build(&backends(&[1.0, 0.0, 1.0]), MAGLEV_M);
        assert!(t.iter().all(|s| *s != Some(1)));
        let t = build(&backends(&[0.0, 0.0]), MAGLEV_M);
        assert!(t.iter().all(Option::is_none));
        assert!(build(&[], MAGLEV_M).iter().all(Option::is_none));
    }

    /// The share of `m` slots that change owner when the middle backend of `all` is removed
    /// (the survivors' indices mapped back to the originals).
    fn moved_without_middle(all: &[Backend], m: u32) -> f64 {
        let before = build(all, m);
        let gone = all.len() / 2;
        let rest: Vec<Backend> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, b)| *b)
            .collect();
        let after = build(&rest, m);
        let orig = |i: u32| if (i as usize) < gone { i } else { i + 1 };
        let changed = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != a.map(orig))
            .count();
        changed as f64 / f64::from(m)
    }

    #[test]
    fn removing_one_of_n_moves_at_most_1_over_n_plus_one_point() {
        for n in [3usize, 10, 100] {
            let all = backends(&vec![1.0; n]);
            let frac = moved_without_middle(&all, MAGLEV_M);
            let bound = 1.0 / n as f64 + 0.01;
            println!(
                "maglev disruption: remove 1 of {n}: {:.3}% of slots changed (bound {:.3}%)",
                frac * 100.0,
                bound * 100.0
            );
            assert!(frac <= bound, "n={n}: {frac} > {bound}");
        }
    }

    /// Every ring size a pool may get keeps today's bounds for the pools that get it (the
    /// most origins `ring_size` gives that size): balance, weights and disruption.
    #[test]
    fn each_ring_size_keeps_balance_weights_and_disruption_within_bounds() {
        for m in lb_common::RING_SIZES {
            let n = (1..=1000)
                .rev()
                .find(|n| lb_common::ring_size(*n) == m)
                .unwrap_or(1000);
            let all = backends(&vec![1.0; n]);
            let before = build(&all, m);
            let s = shares(&before, n);
            let ratio = s.iter().copied().fold(0.0, f64::max) * n as f64;
            let frac = moved_without_middle(&all, m);
            let bound = 1.0 / n as f64 + 0.01;
            let w = [1.0, 0.5, 0.25, 0.75, 0.1];
            let ws = shares(&build(&backends(&w), m), w.len());
            let total: f64 = w.iter().sum();
            let worst = ws
                .iter()
                .zip(w)
                .map(|(share, wi)| (share - wi / total).abs() * 100.0)
                .fold(0.0, f64::max);
            println!(
                "maglev M={m}, {n} origins: max/mean {ratio:.4}, remove one: {:.2}% moved (bound {:.2}%), weights off by {worst:.3} pt",
                frac * 100.0,
                bound * 100.0
            );
            assert!(ratio <= 1.01, "M={m}: max/mean {ratio}");
            assert!(frac <= bound, "M={m}: disruption {frac} > {bound}");
            assert!(worst <= 0.5, "M={m}: weighted share off by {worst} pt");
        }
    }

    #[test]
    fn same_input_same_table() {
        let b = backends(&[0.2, 0.9, 0.4]);
        assert_eq!(build(&b, MAGLEV_M), build(&b, MAGLEV_M));
    }
}
