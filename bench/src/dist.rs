//! Duration distributions for talk time, patience, answer delay and wrap-up.
//!
//! In a scenario file a distribution is a duration (constant) or a table:
//!
//! ```toml
//! talk_time = "3m"                                  # constant
//! talk_time = { exponential = "3m", max = "20m" }   # mean 3 min, clamped at 20 min
//! talk_time = { uniform = ["30s", "90s"] }
//! talk_time = { normal = "3m", sd = "40s", min = "10s" }
//! ```
//!
//! Sampling uses `rand` directly (inverse transform and Box-Muller) rather than `rand_distr`:
//! three formulas do not justify another dependency.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Deserializer};

use crate::duration::Dur;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Constant(f64),
    Uniform(f64, f64),
    Exponential(f64),
    Normal { mean: f64, sd: f64 },
}

/// A distribution of durations, in seconds internally, with optional clamps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dist {
    pub shape: Shape,
    pub min: f64,
    pub max: f64,
}

impl Dist {
    pub fn constant(d: Duration) -> Self {
        Dist {
            shape: Shape::Constant(d.as_secs_f64()),
            min: 0.0,
            max: f64::INFINITY,
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let secs = match self.shape {
            Shape::Constant(c) => c,
            Shape::Uniform(lo, hi) => lo + (hi - lo) * rng.random::<f64>(),
            Shape::Exponential(mean) => exponential(rng, mean),
            Shape::Normal { mean, sd } => mean + sd * standard_normal(rng),
        };
        crate::duration::capped(secs.clamp(self.min, self.max))
    }

    /// The mean before clamping (what capacity planning uses).
    pub fn mean(&self) -> f64 {
        match self.shape {
            Shape::Constant(c) => c,
            Shape::Uniform(lo, hi) => (lo + hi) / 2.0,
            Shape::Exponential(mean) | Shape::Normal { mean, .. } => mean,
        }
    }

    /// Every duration divided by `factor` (a scenario's `time_scale`).
    pub fn scaled(&self, factor: f64) -> Self {
        let s = |v: f64| v / factor;
        Dist {
            shape: match self.shape {
                Shape::Constant(c) => Shape::Constant(s(c)),
                Shape::Uniform(lo, hi) => Shape::Uniform(s(lo), s(hi)),
                Shape::Exponential(m) => Shape::Exponential(s(m)),
                Shape::Normal { mean, sd } => Shape::Normal {
                    mean: s(mean),
                    sd: s(sd),
                },
            },
            min: s(self.min),
            max: s(self.max),
        }
    }

    pub fn describe(&self) -> String {
        let d = |v: f64| Dur::from_secs_f64(v).to_string();
        let mut text = match self.shape {
            Shape::Constant(c) => d(c),
            Shape::Uniform(lo, hi) => format!("uniform {}..{}", d(lo), d(hi)),
            Shape::Exponential(m) => format!("exponential mean {}", d(m)),
            Shape::Normal { mean, sd } => format!("normal {} sd {}", d(mean), d(sd)),
        };
        if self.min > 0.0 {
            text.push_str(&format!(" min {}", d(self.min)));
        }
        if self.max.is_finite() {
            text.push_str(&format!(" max {}", d(self.max)));
        }
        text
    }
}

/// Exponential with the given mean, by inverse transform (`1 - u` avoids ln(0)).
pub fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Box-Muller; one of the pair is enough here.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl<'de> Deserialize<'de> for Dist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            constant: Option<Dur>,
            uniform: Option<[Dur; 2]>,
            #[serde(alias = "exp")]
            exponential: Option<Dur>,
            normal: Option<Dur>,
            sd: Option<Dur>,
            min: Option<Dur>,
            max: Option<Dur>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(Dur),
            Table(Table),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration (\"30s\") or a table such as { exponential = \"3m\" }, \
                 { uniform = [\"1s\", \"5s\"] }, { normal = \"3m\", sd = \"30s\" }",
            )
        })?;
        let t = match raw {
            Raw::Plain(v) => return Ok(Dist::constant(v.0)),
            Raw::Table(t) => t,
        };
        let shapes = [
            t.constant.is_some(),
            t.uniform.is_some(),
            t.exponential.is_some(),
            t.normal.is_some(),
        ];
        if shapes.iter().filter(|s| **s).count() != 1 {
            return Err(serde::de::Error::custom(
                "a distribution needs exactly one of constant, uniform, exponential, normal",
            ));
        }
        let shape = if let Some(c) = t.constant {
            Shape::Constant(c.secs_f64())
        } else if let Some([lo, hi]) = t.uniform {
            if lo > hi {
                return Err(serde::de::Error::custom(
                    "uniform: low bound above high bound",
                ));
            }
            Shape::Uniform(lo.secs_f64(), hi.secs_f64())
        } else if let Some(m) = t.exponential {
            Shape::Exponential(m.secs_f64())
        } else if let Some(m) = t.normal {
            let sd =
                t.sd.ok_or_else(|| serde::de::Error::custom("normal needs sd"))?;
            Shape::Normal {
                mean: m.secs_f64(),
                sd: sd.secs_f64(),
            }
        } else {
            return Err(serde::de::Error::custom("no distribution given"));
        };
        let min = t.min.map_or(0.0, Dur::secs_f64);
        let max = t.max.map_or(f64::INFINITY, Dur::secs_f64);
        if min > max {
            return Err(serde::de::Error::custom("min above max"));
        }
        Ok(Dist { shape, min, max })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn parse(text: &str) -> Result<Dist, toml::de::Error> {
        #[derive(Deserialize)]
        struct T {
            d: Dist,
        }
        toml::from_str::<T>(&format!("d = {text}")).map(|t| t.d)
    }

    fn mean_of(d: &Dist, n: usize) -> f64 {
        let mut rng = StdRng::seed_from_u64(7);
        (0..n)
            .map(|_| d.sample(&mut rng).as_secs_f64())
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn sample_means_match() {
        let exp = parse("{ exponential = \"3m\" }").unwrap();
        assert!((mean_of(&exp, 200_000) - 180.0).abs() < 2.0);
        let uni = parse("{ uniform = [\"1s\", \"3s\"] }").unwrap();
        assert!((mean_of(&uni, 100_000) - 2.0).abs() < 0.02);
        let norm = parse("{ normal = \"10s\", sd = \"1s\" }").unwrap();
        assert!((mean_of(&norm, 100_000) - 10.0).abs() < 0.05);
        assert_eq!(parse("\"250ms\"").unwrap().mean(), 0.25);
    }

    #[test]
    fn clamps_apply_and_scale() {
        let d = parse("{ exponential = \"10s\", max = \"12s\", min = \"1s\" }").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let v = d.sample(&mut rng).as_secs_f64();
            assert!((1.0..=12.0).contains(&v), "{v}");
        }
        let s = d.scaled(10.0);
        assert_eq!(s.mean(), 1.0);
        assert_eq!(s.max, 1.2);
    }

    #[test]
    fn rejects_ambiguous_tables() {
        assert!(parse("{ exponential = \"1s\", constant = \"2s\" }").is_err());
        assert!(parse("{ normal = \"1s\" }").is_err());
        assert!(parse("{ uniform = [\"3s\", \"1s\"] }").is_err());
        assert!(parse("{ bogus = 1 }").is_err());
    }
}
