//! Lists of caller numbers (VIP, blocked): exact numbers and ranges of equal-length numbers.
//!
//! Numbers are compared as the call core passes them; it normalises the caller (national or
//! international form) the same way the lists are written.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberList {
    pub name: String,
    #[serde(default)]
    pub numbers: Vec<NumberPattern>,
}

impl NumberList {
    pub fn contains(&self, number: &str) -> bool {
        self.numbers.iter().any(|pattern| pattern.matches(number))
    }
}

/// `"+8613812345678"`, or `"13900000001-13900000099"`: both ends of the same length, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NumberPattern {
    Exact(String),
    Range { first: String, last: String },
}

impl NumberPattern {
    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Exact(exact) => exact == number,
            NumberPattern::Range { first, last } => {
                number.len() == first.len()
                    && all_digits(number)
                    && (first.as_str()..=last.as_str()).contains(&number)
            }
        }
    }
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

impl TryFrom<String> for NumberPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.split_once('-') {
            Some((first, last)) => {
                if !all_digits(first) || !all_digits(last) {
                    Err(format!("range {text:?}: both ends must be digits"))
                } else if first.len() != last.len() {
                    Err(format!(
                        "range {text:?}: both ends must have the same length"
                    ))
                } else if first > last {
                    Err(format!("range {text:?}: first is after last"))
                } else {
                    Ok(NumberPattern::Range {
                        first: first.to_owned(),
                        last: last.to_owned(),
                    })
                }
            }
            None if all_digits(text.strip_prefix('+').unwrap_or(&text)) => {
                Ok(NumberPattern::Exact(text))
            }
            None => Err(format!("{text:?} is not a number or a range")),
        }
    }
}

impl From<NumberPattern> for String {
    fn from(pattern: NumberPattern) -> String {
        match pattern {
            NumberPattern::Exact(number) => number,
            NumberPattern::Range { first, last } => format!("{first}-{last}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(numbers: &str) -> Result<NumberList, String> {
        toml::from_str(&format!("name = \"vip\"\nnumbers = {numbers}"))
            .map_err(|error: toml::de::Error| error.message().to_owned())
    }

    #[test]
    fn matches_ranges_and_exact_numbers() {
        let vip = list(r#"["13900000001-13900000099", "+8613812345678"]"#).expect("list");
        assert!(vip.contains("13900000001"));
        assert!(vip.contains("13900000050"));
        assert!(vip.contains("13900000099"));
        assert!(!vip.contains("13900000000"));
        assert!(!vip.contains("13900000100"));
        assert!(!vip.contains("1390000005"), "shorter number");
        assert!(!vip.contains("139000000501"), "longer number");
        assert!(!vip.contains("1390000005x"));
        assert!(vip.contains("+8613812345678"));
        assert!(!vip.contains("13812345678"));
        assert!(!vip.contains(""));
    }

    #[test]
    fn rejects_malformed_entries() {
        for (entry, message) in [
            ("139-13a", "range \"139-13a\": both ends must be digits"),
            (
                "139-1390",
                "range \"139-1390\": both ends must have the same length",
            ),
            ("200-100", "range \"200-100\": first is after last"),
            ("vip", "\"vip\" is not a number or a range"),
            ("+", "\"+\" is not a number or a range"),
        ] {
            assert_eq!(list(&format!("[{entry:?}]")).expect_err(entry), message);
        }
    }

    #[test]
    fn writes_entries_back_as_written() {
        let vip = list(r#"["13900000001-13900000099", "+8613812345678"]"#).expect("list");
        let json = serde_json::to_string(&vip).expect("json");
        assert_eq!(
            json,
            r#"{"name":"vip","numbers":["13900000001-13900000099","+8613812345678"]}"#
        );
    }
}
