//! Human durations in scenario files and on the command line: `"30s"`, `"250ms"`, `"3m"`,
//! `"1h30m"`, `"1.5s"`, or a bare number of seconds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration read from text; `Deserialize` accepts a string or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    /// Negative and NaN become zero; huge values are capped at [`MAX_SECS`].
    pub fn from_secs_f64(secs: f64) -> Self {
        Dur(capped(secs))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s.is_finite() && s >= 0.0 => Ok(Dur::from_secs_f64(s)),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "duration must be a non-negative number of seconds, got {s}"
            ))),
            Raw::Text(t) => parse_duration(&t)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The longest duration the harness deals in (about 115 days): timers are `Instant`s, and
/// adding an unbounded duration to one could overflow.
pub const MAX_SECS: f64 = 1e7;

/// `secs` as a duration, clamped to 0..=[`MAX_SECS`] (NaN is 0).
pub fn capped(secs: f64) -> Duration {
    if secs.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(secs.clamp(0.0, MAX_SECS))
}

/// Parses a sequence of `<number><unit>` parts (units `ms`, `s`, `m`, `h`); a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return if (0.0..=MAX_SECS).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("invalid duration {text:?} (0 to {MAX_SECS} s)"))
        };
    }
    let bad = || format!("invalid duration {text:?} (examples: 30s, 250ms, 3m, 1h30m)");
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match rest[..unit_end].trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if !(0.0..=MAX_SECS).contains(&total) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Short form for reports: `250ms`, `12.5s`, `3m20s`, `2h5m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.1}");
        return format!("{}s", text.trim_end_matches(".0"));
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    match (h, s) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert_eq!(capped(f64::INFINITY).as_secs_f64(), MAX_SECS);
        assert_eq!(capped(f64::NAN), Duration::ZERO);
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_millis(12_500)), "12.5s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h5m");
    }

    #[test]
    fn deserializes_from_string_or_number() {
        #[derive(Deserialize)]
        struct T {
            a: Dur,
            b: Dur,
        }
        let t: T = toml::from_str("a = \"2m\"\nb = 1.5").unwrap();
        assert_eq!(t.a.0, Duration::from_secs(120));
        assert_eq!(t.b.0, Duration::from_millis(1500));
    }
}
