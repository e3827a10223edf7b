//! Arrival times of new calls, in wall-clock seconds since the start of the run.

use rand::Rng;
use rand::rngs::StdRng;

use crate::dist::exponential;
use crate::scenario::{Process, Scenario};

/// Times this close (seconds) to a boundary are on it.
const SNAP: f64 = 1e-6;

/// Produces the arrival instants of a scenario, one after the other.
pub struct Arrivals {
    kind: Kind,
    rng: StdRng,
    /// End of the arrival window; `None` runs until stopped.
    end: Option<f64>,
    next_base: f64,
    next_burst: f64,
    burst_left: u32,
}

enum Kind {
    Constant(f64),
    Poisson(f64),
    Ramp {
        from: f64,
        to: f64,
        length: f64,
        steps: u32,
        poisson: bool,
    },
    Burst {
        base: f64,
        calls: u32,
        every: f64,
        within: f64,
    },
}

impl Arrivals {
    pub fn new(s: &Scenario, rng: StdRng) -> Arrivals {
        let base = s.base_rate();
        let window = s.duration.secs_f64();
        let a = &s.arrivals;
        let kind = match a.process {
            Process::Constant => Kind::Constant(base),
            Process::Poisson => Kind::Poisson(base),
            Process::Ramp => Kind::Ramp {
                from: base,
                to: s.ramp_to_rate().unwrap_or(base),
                // A ramp with no end (duration 0) climbs over ten minutes and stays there.
                length: if window > 0.0 { window } else { 600.0 },
                steps: a.steps,
                poisson: a.poisson,
            },
            Process::Burst => Kind::Burst {
                base,
                calls: a.burst_calls.unwrap_or(0),
                every: a.burst_every.map_or(f64::INFINITY, |d| d.secs_f64()),
                within: a.burst_within.secs_f64(),
            },
        };
        let mut arrivals = Arrivals {
            kind,
            rng,
            end: (window > 0.0).then_some(window),
            next_base: 0.0,
            next_burst: f64::INFINITY,
            burst_left: 0,
        };
        arrivals.next_base = arrivals.first_base();
        if let Kind::Burst { every, .. } = arrivals.kind {
            arrivals.next_burst = every;
        }
        arrivals
    }

    /// The rate in effect at `t` (calls/s), for the progress line and ramp stairs.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.kind {
            Kind::Constant(r) | Kind::Poisson(r) => r,
            Kind::Ramp {
                from,
                to,
                length,
                steps,
                ..
            } => ramp_rate(from, to, length, steps, t),
            Kind::Burst { base, .. } => base,
        }
    }

    /// Index of the ramp stair containing `t` (0 for other processes).
    pub fn step_at(&self, t: f64) -> usize {
        match self.kind {
            Kind::Ramp { length, steps, .. } if steps > 0 => {
                ((t / (length / f64::from(steps))) as usize).min(steps as usize - 1)
            }
            _ => 0,
        }
    }

    /// The stairs as (start s, end s, wall-clock rate); one whole-run stair otherwise.
    pub fn steps(&self) -> Vec<(f64, f64, f64)> {
        match self.kind {
            Kind::Ramp {
                from,
                to,
                length,
                steps,
                ..
            } if steps > 0 => {
                let len = length / f64::from(steps);
                (0..steps)
                    .map(|k| {
                        let start = f64::from(k) * len;
                        (
                            start,
                            start + len,
                            ramp_rate(from, to, length, steps, start),
                        )
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn first_base(&mut self) -> f64 {
        match self.kind {
            // Poisson processes start at a random offset like any other gap.
            Kind::Poisson(r) => self.gap(r, true),
            _ => 0.0,
        }
    }

    fn gap(&mut self, rate: f64, poisson: bool) -> f64 {
        if rate <= 0.0 {
            return f64::INFINITY;
        }
        if poisson {
            exponential(&mut self.rng, 1.0 / rate)
        } else {
            1.0 / rate
        }
    }

    /// The next arrival, or `None` when the window is over.
    pub fn next_arrival(&mut self) -> Option<f64> {
        let t = if self.next_burst < self.next_base {
            let t = self.next_burst;
            self.advance_burst();
            t
        } else {
            let t = self.next_base;
            self.advance_base(t);
            t
        };
        match self.end {
            // Within a microsecond of the end counts as the end (float accumulation).
            Some(end) if t >= end - SNAP => None,
            _ if !t.is_finite() => None,
            _ => Some(t),
        }
    }

    fn advance_base(&mut self, t: f64) {
        let gap = match self.kind {
            Kind::Constant(r) | Kind::Burst { base: r, .. } => self.gap(r, false),
            Kind::Poisson(r) => self.gap(r, true),
            Kind::Ramp {
                from,
                to,
                length,
                steps,
                poisson,
            } => {
                let rate = ramp_rate(from, to, length, steps, t);
                let gap = self.gap(rate, poisson);
                // A stair with rate 0 would stall the ramp: jump to the next stair instead.
                if gap.is_finite() {
                    gap
                } else if steps > 0 {
                    let len = length / f64::from(steps);
                    ((t / len).floor() + 1.0) * len - t
                } else {
                    (length / 100.0).max(0.01)
                }
            }
        };
        self.next_base = self.snap(t + gap);
    }

    /// Moves a time within [`SNAP`] of a ramp stair boundary onto it, so accumulated
    /// rounding never puts an arrival in the wrong stair.
    fn snap(&self, t: f64) -> f64 {
        if let Kind::Ramp { length, steps, .. } = self.kind
            && steps > 0
        {
            let len = length / f64::from(steps);
            let boundary = (t / len).round() * len;
            if (t - boundary).abs() < SNAP {
                return boundary;
            }
        }
        t
    }

    fn advance_burst(&mut self) {
        let Kind::Burst {
            calls,
            every,
            within,
            ..
        } = self.kind
        else {
            self.next_burst = f64::INFINITY;
            return;
        };
        if self.burst_left == 0 {
            self.burst_left = calls;
        }
        self.burst_left = self.burst_left.saturating_sub(1);
        let spacing = within / f64::from(calls.max(1));
        self.next_burst = if self.burst_left == 0 {
            // Start of the next burst, counted from the start of this one.
            let this_start = (self.next_burst / every).floor() * every;
            this_start + every
        } else {
            self.next_burst + spacing
        };
        if calls == 0 {
            self.next_burst = f64::INFINITY;
        }
    }

    /// Picks an index with probability proportional to `weights`.
    pub fn pick_weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

fn ramp_rate(from: f64, to: f64, length: f64, steps: u32, t: f64) -> f64 {
    let t = t.clamp(0.0, length);
    if steps == 0 {
        from + (to - from) * t / length
    } else if steps == 1 {
        from
    } else {
        let len = length / f64::from(steps);
        let k = ((t / len) as u32).min(steps - 1);
        from + (to - from) * f64::from(k) / f64::from(steps - 1)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn scenario(arrivals: &str, duration: &str) -> Scenario {
        Scenario::parse(&format!(
            r#"
            name = "t"
            duration = "{duration}"
            [arrivals]
            {arrivals}
            [callers]
            dids = [{{ number = "1000", queue = "q" }}]
            talk_time = "1s"
            [[agents]]
            count = 10
            first_extension = 2001
            skills = ["q"]
            "#
        ))
        .unwrap()
    }

    fn all(s: &Scenario) -> Vec<f64> {
        let mut a = Arrivals::new(s, StdRng::seed_from_u64(3));
        std::iter::from_fn(|| a.next_arrival()).collect()
    }

    #[test]
    fn constant_is_even() {
        let t = all(&scenario("process = \"constant\"\nrate = 10.0", "10s"));
        assert_eq!(t.len(), 100);
        assert!((t[1] - t[0] - 0.1).abs() < 1e-9);
    }

    #[test]
    fn poisson_count_is_near_rate() {
        let t = all(&scenario("process = \"poisson\"\nrate = 100.0", "100s"));
        assert!((9_700..=10_300).contains(&t.len()), "{}", t.len());
    }

    #[test]
    fn stepped_ramp_climbs_in_stairs() {
        let s = scenario(
            "process = \"ramp\"\nrate = 10.0\nto_rate = 40.0\nsteps = 4",
            "40s",
        );
        let t = all(&s);
        // Stairs of 10 s at 10, 20, 30, 40 calls/s.
        assert_eq!(t.len(), 1000);
        let a = Arrivals::new(&s, StdRng::seed_from_u64(1));
        assert_eq!(a.step_at(25.0), 2);
        assert_eq!(a.steps()[3], (30.0, 40.0, 40.0));
        let in_third = t.iter().filter(|x| (20.0..30.0).contains(*x)).count();
        assert_eq!(in_third, 300);
    }

    #[test]
    fn bursts_add_calls() {
        let s = scenario(
            "process = \"burst\"\nrate = 1.0\nburst_calls = 20\nburst_every = \"5s\"\nburst_within = \"1s\"",
            "20s",
        );
        let t = all(&s);
        // 20 base calls and bursts at 5, 10 and 15 s.
        assert_eq!(t.len(), 20 + 60);
        let burst = t.iter().filter(|x| (5.0..6.0).contains(*x)).count();
        assert_eq!(burst, 21);
    }

    #[test]
    fn time_scale_multiplies_rate() {
        let s = scenario("process = \"constant\"\nrate = 1.0", "10s");
        let mut scaled = s.clone();
        scaled.time_scale = 5.0;
        assert_eq!(all(&scaled).len(), 50);
    }
}
