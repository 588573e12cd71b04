//! Pure selection logic: which version, then which backend. No I/O, no clock.
//!
//! Versions are split by nginx's smooth weighted round robin. Rather than keeping the
//! mutable `current` weights behind a lock, one full cycle of the algorithm is computed
//! when a routing snapshot is built; the hot path then only does an atomic
//! `fetch_add` on a counter and indexes the cycle. Over every full cycle the split is
//! exact, and inside a cycle it is as smooth as nginx's.

/// Longest cycle precomputed for a snapshot. Weights whose reduced sum exceeds this are
/// scaled down proportionally (each non-zero weight keeps at least 1), so the split is
/// then exact only to within 1/`MAX_CYCLE`.
pub const MAX_CYCLE: u64 = 10_000;

/// One cycle of smooth weighted round robin over `weights`: the index picked at each
/// step. Weight-0 entries never appear. Empty when every weight is 0.
pub fn smooth_wrr_cycle(weights: &[u32]) -> Vec<usize> {
    let w = reduce(weights);
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i];
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        // `total > 0` implies some weight is non-zero, so `best` is set.
        if let Some(b) = best {
            current[b] -= total;
            out.push(b);
        }
    }
    out
}

/// Divides weights by their greatest common divisor and caps the sum at `MAX_CYCLE`.
fn reduce(weights: &[u32]) -> Vec<i64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let w: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let sum: u64 = w.iter().sum();
    let w = if sum > MAX_CYCLE {
        w.iter()
            .map(|&x| {
                if x == 0 {
                    0
                } else {
                    (x * MAX_CYCLE / sum).max(1)
                }
            })
            .collect()
    } else {
        w
    };
    w.into_iter()
        .map(|x| i64::try_from(x).unwrap_or(0))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Indices `0..len` starting at `start % len` and wrapping around: round robin order.
pub fn rotated(len: usize, start: usize) -> impl Iterator<Item = usize> {
    let s = if len == 0 { 0 } else { start % len };
    (0..len).map(move |i| (s + i) % len)
}

/// Preference of a backend for one attempt; lower is better. A backend not yet tried
/// for this request beats one that was; among those, one not marked down (recent
/// connect failure) beats one that was.
pub fn rank(tried: bool, down: bool) -> u8 {
    u8::from(tried) * 2 + u8::from(down)
}

/// How much a backend is preferred for one attempt; lower is better, compared field
/// by field in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Preference {
    /// See [`rank`].
    pub rank: u8,
    /// In another version than the one the request was routed to (used only when
    /// that version's backends were tried or are down).
    pub fallback: bool,
    /// Requests in flight, under least-requests balancing; 0 under round robin.
    pub load: u64,
}

impl Preference {
    /// Nothing is better: not tried, not down, in the routed version, idle.
    pub const IDEAL: Preference = Preference {
        rank: 0,
        fallback: false,
        load: 0,
    };
}

/// The first candidate with the lowest [`Preference`]. Candidates come in preference
/// order (primary version first, each version in round-robin order), so under round
/// robin the first untried, healthy backend of the primary version wins at once.
pub fn best<T>(candidates: impl IntoIterator<Item = (T, Preference)>) -> Option<T> {
    let mut found: Option<(T, Preference)> = None;
    for (c, p) in candidates {
        if p == Preference::IDEAL {
            return Some(c);
        }
        if let Some((_, f)) = &found
            && f.rank == 0
            && !f.fallback
            && p.fallback
        {
            // A usable backend of the routed version beats every fallback.
            break;
        }
        if found.as_ref().is_none_or(|(_, f)| p < *f) {
            found = Some((c, p));
        }
    }
    found.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(cycle: &[usize], n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in 0..picks {
            c[cycle[i % cycle.len()]] += 1;
        }
        c
    }

    #[test]
    fn split_is_exact() {
        let cycle = smooth_wrr_cycle(&[10, 90]);
        assert_eq!(counts(&cycle, 2, 1000), vec![100, 900]);
        let cycle = smooth_wrr_cycle(&[1, 2, 3]);
        assert_eq!(counts(&cycle, 3, 600), vec![100, 200, 300]);
    }

    #[test]
    fn zero_weight_never_picked() {
        let cycle = smooth_wrr_cycle(&[0, 5, 0, 3]);
        assert!(cycle.iter().all(|&i| i == 1 || i == 3));
        assert_eq!(counts(&cycle, 4, 800), vec![0, 500, 0, 300]);
        assert!(smooth_wrr_cycle(&[0, 0]).is_empty());
        assert!(smooth_wrr_cycle(&[]).is_empty());
    }

    #[test]
    fn smooth_like_nginx() {
        // nginx's documented example: weights a=5 b=1 c=1 -> a a b a c a a.
        assert_eq!(smooth_wrr_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        // 50/50 alternates rather than bursting.
        assert_eq!(smooth_wrr_cycle(&[50, 50]), vec![0, 1]);
    }

    #[test]
    fn every_window_is_close() {
        let cycle = smooth_wrr_cycle(&[10, 90]);
        // In any 10 consecutive picks, exactly one goes to the 10% version.
        for start in 0..100 {
            let n = (start..start + 10)
                .filter(|i| cycle[i % cycle.len()] == 0)
                .count();
            assert_eq!(n, 1, "window at {start}");
        }
    }

    #[test]
    fn huge_weights_are_capped() {
        let cycle = smooth_wrr_cycle(&[1, 3_999_999, 7]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 3);
        assert!(cycle.contains(&0) && cycle.contains(&2));
    }

    #[test]
    fn rotation_and_rank() {
        assert_eq!(rotated(3, 4).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(rotated(0, 4).count(), 0);
        let p = |rank, fallback, load| Preference {
            rank,
            fallback,
            load,
        };
        let r = |rank| p(rank, false, 0);
        assert_eq!(best([("a", r(3)), ("b", r(1)), ("c", r(1))]), Some("b"));
        assert_eq!(best([("a", r(2)), ("b", r(0)), ("c", r(0))]), Some("b"));
        assert_eq!(best(Vec::<(u8, Preference)>::new()), None);
        assert!(rank(false, true) < rank(true, false));
        // Least requests: the least loaded of the routed version, first on ties.
        assert_eq!(
            best([
                ("a", p(0, false, 3)),
                ("b", p(0, false, 1)),
                ("c", p(0, false, 1))
            ]),
            Some("b")
        );
        // A fallback version only when the routed one has nothing usable.
        assert_eq!(
            best([("a", p(0, false, 9)), ("x", p(0, true, 0))]),
            Some("a")
        );
        assert_eq!(
            best([("a", p(2, false, 0)), ("x", p(0, true, 0))]),
            Some("x")
        );
        assert_eq!(
            best([("a", p(1, false, 0)), ("x", p(0, true, 5))]),
            Some("x")
        );
    }
}
