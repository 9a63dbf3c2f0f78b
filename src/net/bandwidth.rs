//! The shipper's bandwidth: a limit in bytes per second, and optionally
//! other limits in windows of the week (working hours, say), as ASR and
//! Zerto offer. Changeable while the shipper runs.

use crate::error::{Error, Result};

/// A window of the week with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The days it applies: bit 0 Monday ... bit 6 Sunday.
    pub days: u8,
    /// Its start, in minutes after midnight (0 to 1439).
    pub from_minute: u16,
    /// Its end, exclusive, in minutes after midnight (1 to 1440); a window
    /// ending before it starts runs past midnight into the next day.
    pub to_minute: u16,
    /// The limit inside it (bytes per second); `None` is unlimited.
    pub limit: Option<u64>,
}

/// Weekdays, for [`Window::days`].
pub const WEEKDAYS: u8 = 0b001_1111;
/// Every day, for [`Window::days`].
pub const EVERY_DAY: u8 = 0b111_1111;

/// The limits the shipper follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// The limit outside every window (bytes per second); `None` is
    /// unlimited.
    pub limit: Option<u64>,
    /// Windows with their own limit; the first that holds the moment wins.
    pub windows: Vec<Window>,
    /// The site's offset from UTC, in minutes, that the windows' times are
    /// in (no time-zone database: a site across a daylight-saving change
    /// updates it, or writes its windows in UTC).
    pub utc_offset_minutes: i32,
}

impl Bandwidth {
    /// No limit at any time.
    pub fn unlimited() -> Self {
        Bandwidth::default()
    }

    /// One limit at all times.
    pub fn fixed(bytes_per_sec: u64) -> Self {
        Bandwidth {
            limit: Some(bytes_per_sec),
            ..Bandwidth::default()
        }
    }

    /// Checks the windows' days and minutes.
    pub fn validate(&self) -> Result<()> {
        for w in &self.windows {
            if w.days & !EVERY_DAY != 0 || w.days == 0 {
                return Err(Error::invalid(format!(
                    "a bandwidth window's days {:#09b}: bits 0 (Monday) to 6 (Sunday), at least one",
                    w.days
                )));
            }
            if w.from_minute >= 1440 || w.to_minute == 0 || w.to_minute > 1440 {
                return Err(Error::invalid(format!(
                    "a bandwidth window from minute {} to {}: 0..1440",
                    w.from_minute, w.to_minute
                )));
            }
        }
        if self.utc_offset_minutes.abs() > 18 * 60 {
            return Err(Error::invalid("a UTC offset beyond 18 hours"));
        }
        Ok(())
    }

    /// The limit at `unix_secs` (seconds since the Unix epoch, UTC).
    pub fn limit_at(&self, unix_secs: u64) -> Option<u64> {
        let local =
            i64::try_from(unix_secs).unwrap_or(i64::MAX) + i64::from(self.utc_offset_minutes) * 60;
        let minutes = local.div_euclid(60);
        let minute = u16::try_from(minutes.rem_euclid(1440)).unwrap_or(0);
        // 1970-01-01 was a Thursday (3 with Monday as 0).
        let day = u8::try_from((minutes.div_euclid(1440) + 3).rem_euclid(7)).unwrap_or(0);
        let yesterday = (day + 6) % 7;
        self.windows
            .iter()
            .find(|w| {
                let on = |d: u8| w.days & (1 << d) != 0;
                if w.from_minute < w.to_minute {
                    on(day) && (w.from_minute..w.to_minute).contains(&minute)
                } else {
                    // Past midnight: the evening of a listed day, or the
                    // morning after it.
                    (on(day) && minute >= w.from_minute) || (on(yesterday) && minute < w.to_minute)
                }
            })
            .map_or(self.limit, |w| w.limit)
    }

    /// The limit now.
    pub fn limit_now(&self) -> Option<u64> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.limit_at(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30 was a Monday; seconds at `h:m` UTC that day plus `days`.
    fn at(days: u64, h: u64, m: u64) -> u64 {
        1_795_996_800 + days * 86_400 + h * 3600 + m * 60
    }

    #[test]
    fn working_hours_weekends_and_nights_past_midnight() {
        let b = Bandwidth {
            limit: Some(100),
            windows: vec![
                Window {
                    days: WEEKDAYS,
                    from_minute: 8 * 60,
                    to_minute: 18 * 60,
                    limit: Some(10),
                },
                Window {
                    days: 1 << 4, // Friday night into Saturday
                    from_minute: 22 * 60,
                    to_minute: 6 * 60,
                    limit: None,
                },
            ],
            utc_offset_minutes: 0,
        };
        b.validate().unwrap();
        assert_eq!(b.limit_at(at(0, 7, 59)), Some(100));
        assert_eq!(b.limit_at(at(0, 8, 0)), Some(10));
        assert_eq!(b.limit_at(at(0, 17, 59)), Some(10));
        assert_eq!(b.limit_at(at(0, 18, 0)), Some(100));
        assert_eq!(b.limit_at(at(4, 23, 0)), None); // Friday 23:00
        assert_eq!(b.limit_at(at(5, 5, 59)), None); // Saturday 05:59
        assert_eq!(b.limit_at(at(5, 6, 0)), Some(100));
        assert_eq!(b.limit_at(at(5, 9, 0)), Some(100)); // Saturday: no hours
        assert_eq!(b.limit_at(at(3, 23, 0)), Some(100)); // Thursday night
                                                         // An hour east of UTC: 07:30 UTC is 08:30 there.
        let east = Bandwidth {
            utc_offset_minutes: 60,
            ..b.clone()
        };
        assert_eq!(east.limit_at(at(0, 7, 30)), Some(10));
        assert_eq!(east.limit_at(at(0, 17, 30)), Some(100));
    }

    #[test]
    fn malformed_windows_are_refused() {
        for w in [
            (0, 0, 60),
            (0x80, 0, 60),
            (1, 1440, 60),
            (1, 0, 0),
            (1, 0, 1441),
        ] {
            let b = Bandwidth {
                windows: vec![Window {
                    days: w.0,
                    from_minute: w.1,
                    to_minute: w.2,
                    limit: None,
                }],
                ..Bandwidth::default()
            };
            assert!(b.validate().is_err(), "{w:?}");
        }
    }
}
