//! Durations as manifests write them: `250ms`, `30s`, `15m`, `12h`, `30d`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::InvalidName;

/// A whole number of milliseconds, written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(u64);

impl Span {
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(secs * 1000)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl FromStr for Span {
    type Err = InvalidName;

    /// A number followed by `ms`, `s`, `m`, `h` or `d`; a bare number is
    /// seconds.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || InvalidName {
            what: "duration",
            value: text.chars().take(80).collect(),
            reason: "must be a whole number with a unit, such as 250ms, 30s, 15m, 12h or 30d",
        };
        let trimmed = text.trim();
        let (number, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => trimmed.split_at(at),
            None => (trimmed, "s"),
        };
        let n: u64 = number.parse().map_err(|_| fail())?;
        let factor = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(fail()),
        };
        n.checked_mul(factor).map(Self).ok_or_else(fail)
    }
}

impl fmt::Display for Span {
    /// The largest unit that divides the span exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        for (factor, unit) in units {
            if self.0 != 0 && self.0.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units_parse() {
        assert_eq!("250ms".parse::<Span>().unwrap().as_millis(), 250);
        assert_eq!("30s".parse::<Span>().unwrap().as_millis(), 30_000);
        assert_eq!("90".parse::<Span>().unwrap().as_millis(), 90_000);
        assert_eq!("2h".parse::<Span>().unwrap().as_millis(), 7_200_000);
        assert!("soon".parse::<Span>().is_err());
        assert!("5w".parse::<Span>().is_err());
        assert!("-5s".parse::<Span>().is_err());
        assert!("99999999999999999999d".parse::<Span>().is_err());
    }

    proptest! {
        #[test]
        fn display_parses_back(millis in 0u64..1_000_000_000_000) {
            let span = Span::from_millis(millis);
            prop_assert_eq!(span.to_string().parse::<Span>().unwrap(), span);
        }
    }
}
