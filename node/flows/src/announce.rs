//! Spoken numbers from recorded pieces: queue announcements and numbers read back to callers.
//!
//! A prompt is named `<language>/<name>`; its file is `<prompts dir>/<language>/<name>.wav`.
//! Numbers are built from `number-0`..`number-20`, the tens `number-30`..`number-90` and
//! `number-100` ("one hundred", 一百): 45 is `number-40 number-5`, 145 is
//! `number-100 number-40 number-5`, 245 is `number-2 number-hundred number-40 number-5`.
//! Mandarin says 一百零五 and 一百一十五 (`number-100 number-0 number-5`,
//! `number-100 number-1 number-15`). A wait of two minutes uses `count-2` (两分钟 in Mandarin),
//! a wait of a minute or less `wait-less-than-minute`. Numbers from 1,000 on are read digit by digit.
//! `deploy/prompts/README.md` lists the recorded pieces; the names here must match it.

/// The prompt that plays `name` in `language`.
pub(crate) fn prompt_path(language: &str, name: &str) -> String {
    format!("{language}/{name}")
}

fn is_mandarin(language: &str) -> bool {
    language == "zh" || language.starts_with("zh-")
}

/// "You are number N in line. Your estimated waiting time is M minutes." A `position` of 0
/// leaves out the first sentence and no `wait_secs` the second. Waits of a minute or less are
/// "less than a minute"; longer ones are rounded up to whole minutes.
pub fn announce(language: &str, position: u32, wait_secs: Option<u64>) -> Vec<String> {
    let mandarin = is_mandarin(language);
    let mut names = Vec::new();
    if position > 0 {
        names.push("position-before".to_owned());
        names.extend(number_names(u64::from(position), mandarin));
        names.push("position-after".to_owned());
    }
    match wait_secs {
        None => {}
        Some(secs) if secs <= 60 => {
            names.extend(["wait-before", "wait-less-than-minute"].map(str::to_owned));
        }
        Some(secs) => {
            names.push("wait-before".to_owned());
            match secs.div_ceil(60) {
                // Two as a count: 两分钟, not 二分钟.
                2 => names.extend(["count-2", "wait-minutes"].map(str::to_owned)),
                minutes => {
                    names.extend(number_names(minutes, mandarin));
                    names.push("wait-minutes".to_owned());
                }
            }
        }
    }
    names
        .iter()
        .map(|name| prompt_path(language, name))
        .collect()
}

/// The digits of `number` one by one (other characters are skipped), as when confirming a
/// callback number. Mandarin `digit-1` is recorded as 幺, as phone numbers are read.
pub fn read_number(language: &str, number: &str) -> Vec<String> {
    number
        .chars()
        .filter(char::is_ascii_digit)
        .map(|digit| prompt_path(language, &format!("digit-{digit}")))
        .collect()
}

fn number_names(n: u64, mandarin: bool) -> Vec<String> {
    let number = |n: u64| format!("number-{n}");
    match n {
        0..=20 => vec![number(n)],
        21..=99 if n % 10 == 0 => vec![number(n)],
        21..=99 => vec![number(n / 10 * 10), number(n % 10)],
        100..=999 => {
            let mut names = match n / 100 {
                1 => vec![number(100)],
                hundreds => vec![number(hundreds), "number-hundred".to_owned()],
            };
            match n % 100 {
                0 => {}
                rest @ 1..=9 if mandarin => names.extend([number(0), number(rest)]),
                rest @ 10..=19 if mandarin => names.extend([number(1), number(rest)]),
                rest => names.extend(number_names(rest, mandarin)),
            }
            names
        }
        _ => n
            .to_string()
            .chars()
            .map(|digit| format!("digit-{digit}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prompts: Vec<String>) -> String {
        prompts.join(" ")
    }

    fn spoken(n: u64, mandarin: bool) -> String {
        number_names(n, mandarin).join(" ")
    }

    #[test]
    fn english_numbers() {
        assert_eq!(spoken(0, false), "number-0");
        assert_eq!(spoken(7, false), "number-7");
        assert_eq!(spoken(20, false), "number-20");
        assert_eq!(spoken(30, false), "number-30");
        assert_eq!(spoken(45, false), "number-40 number-5");
        assert_eq!(spoken(99, false), "number-90 number-9");
        assert_eq!(spoken(100, false), "number-100");
        assert_eq!(spoken(105, false), "number-100 number-5");
        assert_eq!(spoken(115, false), "number-100 number-15");
        assert_eq!(spoken(145, false), "number-100 number-40 number-5");
        assert_eq!(spoken(199, false), "number-100 number-90 number-9");
        assert_eq!(spoken(250, false), "number-2 number-hundred number-50");
        assert_eq!(
            spoken(245, false),
            "number-2 number-hundred number-40 number-5"
        );
        assert_eq!(spoken(1250, false), "digit-1 digit-2 digit-5 digit-0");
    }

    #[test]
    fn mandarin_numbers() {
        assert_eq!(spoken(12, true), "number-12");
        assert_eq!(spoken(45, true), "number-40 number-5");
        assert_eq!(spoken(100, true), "number-100");
        assert_eq!(spoken(105, true), "number-100 number-0 number-5");
        assert_eq!(spoken(110, true), "number-100 number-1 number-10");
        assert_eq!(spoken(115, true), "number-100 number-1 number-15");
        assert_eq!(spoken(120, true), "number-100 number-20");
        assert_eq!(spoken(145, true), "number-100 number-40 number-5");
        assert_eq!(
            spoken(305, true),
            "number-3 number-hundred number-0 number-5"
        );
    }

    #[test]
    fn announces_position_and_wait() {
        assert_eq!(
            names(announce("en", 3, Some(150))),
            "en/position-before en/number-3 en/position-after en/wait-before en/number-3 en/wait-minutes"
        );
        assert_eq!(
            names(announce("en", 45, Some(30))),
            "en/position-before en/number-40 en/number-5 en/position-after en/wait-before en/wait-less-than-minute"
        );
        assert_eq!(
            names(announce("en", 1, Some(60))),
            "en/position-before en/number-1 en/position-after en/wait-before en/wait-less-than-minute"
        );
        assert_eq!(
            names(announce("en", 0, Some(61))),
            "en/wait-before en/count-2 en/wait-minutes"
        );
        assert_eq!(
            names(announce("en", 0, Some(90 * 60))),
            "en/wait-before en/number-90 en/wait-minutes"
        );
        assert_eq!(
            names(announce("en", 2, None)),
            "en/position-before en/number-2 en/position-after"
        );
        assert!(announce("en", 0, None).is_empty());
    }

    #[test]
    fn mandarin_says_liang_for_two_minutes_but_er_for_second_place() {
        assert_eq!(
            names(announce("zh", 2, Some(120))),
            "zh/position-before zh/number-2 zh/position-after zh/wait-before zh/count-2 zh/wait-minutes"
        );
        assert_eq!(
            names(announce("zh-CN", 0, Some(22 * 60))),
            "zh-CN/wait-before zh-CN/number-20 zh-CN/number-2 zh-CN/wait-minutes"
        );
    }

    #[test]
    fn reads_numbers_digit_by_digit() {
        assert_eq!(
            names(read_number("zh", "139-0000 0001")),
            "zh/digit-1 zh/digit-3 zh/digit-9 zh/digit-0 zh/digit-0 zh/digit-0 zh/digit-0 zh/digit-0 zh/digit-0 zh/digit-0 zh/digit-1"
        );
        assert_eq!(names(read_number("en", "+86")), "en/digit-8 en/digit-6");
    }
}
