//! Opening hours: weekly ranges and holidays in a named time zone, with a manual override.
//!
//! Ranges are local wall-clock times turned into instants for the day they start on, so a range
//! keeps its wall-clock meaning across DST changes and one crossing midnight (close at or before
//! open) ends on the next day. A local time that does not exist (spring forward) opens or closes
//! as late as the gap shifts it; one that exists twice (fall back) counts once, at its first
//! occurrence. A holiday closes its whole local date.
//!
//! The zone is resolved when the document is read (the tz database is compiled into the binary,
//! which runs `FROM scratch` with no zoneinfo), so a schedule in memory always evaluates.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// An IANA name such as `Asia/Shanghai`.
    #[serde(with = "zone_name")]
    pub time_zone: TimeZone,
    #[serde(default)]
    pub hours: Vec<OpeningHours>,
    /// Local dates on which the schedule is closed all day.
    #[serde(default)]
    pub holidays: Vec<Date>,
    /// Set through the API to force the schedule open or closed.
    #[serde(default, rename = "override")]
    pub manual: Override,
}

/// Open from `open` to `close` (exclusive) on each of `days` (default: every day). A range whose
/// close is at or before its open ends on the following day; `open = close` is 24 hours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningHours {
    #[serde(default = "every_day")]
    pub days: Vec<Weekday>,
    pub open: Time,
    pub close: Time,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    #[default]
    Auto,
    Open,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleState {
    Open,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

fn every_day() -> Vec<Weekday> {
    use Weekday::*;
    vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun]
}

impl Weekday {
    fn of(date: Date) -> Weekday {
        match date.weekday() {
            jiff::civil::Weekday::Monday => Weekday::Mon,
            jiff::civil::Weekday::Tuesday => Weekday::Tue,
            jiff::civil::Weekday::Wednesday => Weekday::Wed,
            jiff::civil::Weekday::Thursday => Weekday::Thu,
            jiff::civil::Weekday::Friday => Weekday::Fri,
            jiff::civil::Weekday::Saturday => Weekday::Sat,
            jiff::civil::Weekday::Sunday => Weekday::Sun,
        }
    }
}

impl Schedule {
    pub fn state_at(&self, now: Timestamp) -> ScheduleState {
        match self.manual {
            Override::Open => return ScheduleState::Open,
            Override::Closed => return ScheduleState::Closed,
            Override::Auto => {}
        }
        let today = self.time_zone.to_datetime(now).date();
        if self.holidays.contains(&today) {
            return ScheduleState::Closed;
        }
        let starts = [today.yesterday().ok(), Some(today)];
        let open = self.hours.iter().any(|hours| {
            starts
                .iter()
                .flatten()
                .any(|&day| hours.contains(&self.time_zone, day, now))
        });
        if open {
            ScheduleState::Open
        } else {
            ScheduleState::Closed
        }
    }
}

impl OpeningHours {
    /// Whether the range starting on local date `day` covers `now`.
    fn contains(&self, zone: &TimeZone, day: Date, now: Timestamp) -> bool {
        if !self.days.contains(&Weekday::of(day)) {
            return false;
        }
        let close_day = if self.close <= self.open {
            day.tomorrow().ok()
        } else {
            Some(day)
        };
        let instant = |date: Date, time: Time| zone.to_timestamp(date.to_datetime(time)).ok();
        match (
            instant(day, self.open),
            close_day.and_then(|d| instant(d, self.close)),
        ) {
            (Some(opens), Some(closes)) => opens <= now && now < closes,
            _ => false,
        }
    }
}

mod zone_name {
    use jiff::tz::TimeZone;
    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(zone: &TimeZone, serializer: S) -> Result<S::Ok, S::Error> {
        let name = zone
            .iana_name()
            .ok_or_else(|| ser::Error::custom("a schedule's time zone needs an IANA name"))?;
        serializer.serialize_str(name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TimeZone, D::Error> {
        let name = String::deserialize(deserializer)?;
        TimeZone::get(&name).map_err(|_| de::Error::custom(format!("unknown time zone {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(text: &str) -> Schedule {
        toml::from_str(text).expect("schedule parses")
    }

    /// The instant of a local wall-clock time in `zone`.
    fn at(zone: &str, local: &str) -> Timestamp {
        let datetime: jiff::civil::DateTime = local.parse().expect("local time");
        datetime
            .to_zoned(TimeZone::get(zone).expect("zone"))
            .expect("zoned")
            .timestamp()
    }

    fn shanghai() -> Schedule {
        schedule(
            r#"
            name = "general"
            time_zone = "Asia/Shanghai"
            hours = [{ open = "08:30", close = "22:30" }]
            holidays = ["2026-10-01"]
            "#,
        )
    }

    #[test]
    fn opens_at_half_past_eight_and_closes_at_half_past_ten_shanghai() {
        let general = shanghai();
        let state = |local| general.state_at(at("Asia/Shanghai", local));
        assert_eq!(state("2026-06-01T08:29:59"), ScheduleState::Closed);
        assert_eq!(state("2026-06-01T08:30:00"), ScheduleState::Open);
        assert_eq!(state("2026-06-01T22:29:59"), ScheduleState::Open);
        assert_eq!(state("2026-06-01T22:30:00"), ScheduleState::Closed);
        // 08:30 in Shanghai is 00:30 UTC.
        let utc: Timestamp = "2026-06-01T00:30:00Z".parse().expect("timestamp");
        assert_eq!(general.state_at(utc), ScheduleState::Open);
    }

    #[test]
    fn holiday_closes_the_local_date() {
        let general = shanghai();
        assert_eq!(
            general.state_at(at("Asia/Shanghai", "2026-10-01T12:00:00")),
            ScheduleState::Closed
        );
        assert_eq!(
            general.state_at(at("Asia/Shanghai", "2026-10-02T12:00:00")),
            ScheduleState::Open
        );
        // 2026-09-30 20:00 UTC is already 2026-10-01 04:00 in Shanghai: the local date counts.
        let schedule = Schedule {
            hours: vec![OpeningHours {
                days: every_day(),
                open: Time::midnight(),
                close: Time::midnight(),
            }],
            ..general
        };
        let utc: Timestamp = "2026-09-30T20:00:00Z".parse().expect("timestamp");
        assert_eq!(schedule.state_at(utc), ScheduleState::Closed);
    }

    #[test]
    fn override_wins_over_hours_and_holidays() {
        let mut general = shanghai();
        let night = at("Asia/Shanghai", "2026-06-01T03:00:00");
        let holiday = at("Asia/Shanghai", "2026-10-01T12:00:00");
        let day = at("Asia/Shanghai", "2026-06-01T12:00:00");
        general.manual = Override::Open;
        assert_eq!(general.state_at(night), ScheduleState::Open);
        assert_eq!(general.state_at(holiday), ScheduleState::Open);
        general.manual = Override::Closed;
        assert_eq!(general.state_at(day), ScheduleState::Closed);
        general.manual = Override::Auto;
        assert_eq!(general.state_at(day), ScheduleState::Open);
    }

    #[test]
    fn weekdays_and_ranges_crossing_midnight() {
        let night = schedule(
            r#"
            name = "night"
            time_zone = "Asia/Shanghai"
            [[hours]]
            days = ["fri"]
            open = "22:00"
            close = "06:00"
            "#,
        );
        let state = |local| night.state_at(at("Asia/Shanghai", local));
        // 2026-06-05 is a Friday.
        assert_eq!(state("2026-06-05T21:59:59"), ScheduleState::Closed);
        assert_eq!(state("2026-06-05T22:00:00"), ScheduleState::Open);
        assert_eq!(state("2026-06-06T05:59:59"), ScheduleState::Open);
        assert_eq!(state("2026-06-06T06:00:00"), ScheduleState::Closed);
        assert_eq!(state("2026-06-06T23:00:00"), ScheduleState::Closed);
        assert_eq!(state("2026-06-04T23:00:00"), ScheduleState::Closed);
    }

    #[test]
    fn keeps_wall_clock_hours_across_dst_in_berlin() {
        let utc = |text: &str| -> Timestamp { text.parse().expect("timestamp") };
        let day = schedule(
            r#"
            name = "day"
            time_zone = "Europe/Berlin"
            hours = [{ open = "08:30", close = "22:30" }]
            "#,
        );
        // Winter: 08:30 CET is 07:30 UTC; summer: 08:30 CEST is 06:30 UTC.
        for (instant, state) in [
            ("2026-01-15T07:29:59Z", ScheduleState::Closed),
            ("2026-01-15T07:30:00Z", ScheduleState::Open),
            ("2026-07-15T06:29:59Z", ScheduleState::Closed),
            ("2026-07-15T06:30:00Z", ScheduleState::Open),
            ("2026-07-15T20:29:59Z", ScheduleState::Open),
            ("2026-07-15T20:30:00Z", ScheduleState::Closed),
        ] {
            assert_eq!(day.state_at(utc(instant)), state, "{instant}");
        }
        let night = schedule(
            r#"
            name = "night"
            time_zone = "Europe/Berlin"
            hours = [{ days = ["sat"], open = "22:00", close = "06:00" }]
            "#,
        );
        // The night of 2026-03-28/29 loses an hour (02:00 CET -> 03:00 CEST): the Saturday range
        // opens at 22:00 CET (21:00 UTC) and closes at 06:00 CEST (04:00 UTC), seven hours.
        for (instant, state) in [
            ("2026-03-28T20:59:59Z", ScheduleState::Closed),
            ("2026-03-28T21:00:00Z", ScheduleState::Open),
            ("2026-03-29T03:59:59Z", ScheduleState::Open),
            ("2026-03-29T04:00:00Z", ScheduleState::Closed),
        ] {
            assert_eq!(night.state_at(utc(instant)), state, "{instant}");
        }
    }

    #[test]
    fn dst_gap_and_fold_in_berlin() {
        let early = schedule(
            r#"
            name = "early"
            time_zone = "Europe/Berlin"
            hours = [{ open = "02:30", close = "02:45" }]
            "#,
        );
        let utc = |text: &str| -> Timestamp { text.parse().expect("timestamp") };
        // On 2026-03-29 02:00-03:00 does not exist; the gap shifts the range an hour later, to
        // 03:30-03:45 CEST (01:30-01:45 UTC).
        assert_eq!(
            early.state_at(utc("2026-03-29T01:29:59Z")),
            ScheduleState::Closed
        );
        assert_eq!(
            early.state_at(utc("2026-03-29T01:30:00Z")),
            ScheduleState::Open
        );
        assert_eq!(
            early.state_at(utc("2026-03-29T01:45:00Z")),
            ScheduleState::Closed
        );
        // 2026-10-25 02:30 happens twice; only the first (CEST, 00:30 UTC) opens.
        assert_eq!(
            early.state_at(utc("2026-10-25T00:30:00Z")),
            ScheduleState::Open
        );
        assert_eq!(
            early.state_at(utc("2026-10-25T00:44:59Z")),
            ScheduleState::Open
        );
        assert_eq!(
            early.state_at(utc("2026-10-25T01:30:00Z")),
            ScheduleState::Closed
        );
    }

    #[test]
    fn reads_and_writes_names_and_rejects_unknown_zones() {
        let general = shanghai();
        assert_eq!(general.manual, Override::Auto);
        let json = serde_json::to_string(&general).expect("to json");
        assert!(json.contains(r#""time_zone":"Asia/Shanghai""#), "{json}");
        assert!(json.contains(r#""holidays":["2026-10-01"]"#), "{json}");
        let back: Schedule = serde_json::from_str(&json).expect("from json");
        assert_eq!(back, general);
        let error = toml::from_str::<Schedule>("name = \"x\"\ntime_zone = \"Asia/Shangai\"")
            .expect_err("unknown zone");
        assert_eq!(error.message(), "unknown time zone \"Asia/Shangai\"");
        let error = toml::from_str::<Schedule>(
            "name = \"x\"\ntime_zone = \"UTC\"\nhours = [{ days = [\"monday\"], open = \"08:00\", close = \"09:00\" }]",
        )
        .expect_err("bad day");
        assert!(
            error.message().contains("unknown variant `monday`"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn empty_schedule_is_always_closed() {
        let none = schedule("name = \"never\"\ntime_zone = \"UTC\"");
        assert_eq!(
            none.state_at(at("UTC", "2026-06-01T12:00:00")),
            ScheduleState::Closed
        );
    }
}
