//! Ratios from interleaved timing, shared by the nanosecond benches.
//!
//! Criterion measures one function after the other, and on a shared VM the machine's
//! speed drifts between the two (±25% here), which moves a ratio of two separate
//! estimates more than the thing measured. [`ratio`] alternates blocks of the two
//! closures instead (A B, B A, A B …), so both see the same machine, and reports the
//! median of the per-round ratios with their range.

use std::time::Instant;

/// A ratio of `a`'s time to `b`'s over interleaved rounds.
pub struct Ratio {
    /// The median per-round ratio.
    pub median: f64,
    /// The smallest per-round ratio.
    pub min: f64,
    /// The largest per-round ratio.
    pub max: f64,
    /// The median time of one `a` call, in nanoseconds.
    pub a_ns: f64,
    /// The median time of one `b` call, in nanoseconds.
    pub b_ns: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} min={:.3} max={:.3} a_ns={:.2} b_ns={:.2}",
            self.median, self.min, self.max, self.a_ns, self.b_ns
        )
    }
}

/// Times `iters` calls of `a` and of `b` in turn, `rounds` times, flipping which goes
/// first each round, after one untimed warm-up round.
pub fn ratio<A: FnMut(), B: FnMut()>(rounds: usize, iters: u32, mut a: A, mut b: B) -> Ratio {
    block(iters, &mut a);
    block(iters, &mut b);
    let mut ratios = Vec::with_capacity(rounds);
    let (mut a_times, mut b_times) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        let (ta, tb) = if round % 2 == 0 {
            let ta = block(iters, &mut a);
            (ta, block(iters, &mut b))
        } else {
            let tb = block(iters, &mut b);
            (block(iters, &mut a), tb)
        };
        ratios.push(ta / tb);
        a_times.push(ta);
        b_times.push(tb);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&mut ratios);
    Ratio {
        median: ratio,
        min: ratios[0],
        max: ratios[ratios.len() - 1],
        a_ns: median(&mut a_times),
        b_ns: median(&mut b_times),
    }
}

/// Nanoseconds per call of `f` over `iters` calls (monomorphised, so `f` is inlined
/// into the loop exactly as criterion's `iter` inlines it).
#[inline(never)]
fn block<F: FnMut()>(iters: u32, f: &mut F) -> f64 {
    let started = Instant::now();
    for _ in 0..iters {
        f();
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
}
