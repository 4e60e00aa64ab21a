//! Consistency levels: how many replicas must answer a read (R) or a write (W).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How many replicas must answer, chosen per request for reads and writes separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Level {
    /// One replica.
    One,
    /// Two replicas.
    Two,
    /// Three replicas.
    Three,
    /// A majority of the N replicas: `N / 2 + 1`.
    Quorum,
    /// All N replicas.
    All,
    /// Exactly this many replicas (1..=N).
    Exactly(u8),
}

impl Level {
    /// The number of replies this level needs with replication factor `n`.
    ///
    /// A level asking for more than `n` replicas is an error, not a silent cap.
    pub fn required(self, n: usize) -> Result<usize, Error> {
        let needed = match self {
            Level::One => 1,
            Level::Two => 2,
            Level::Three => 3,
            Level::Quorum => n / 2 + 1,
            Level::All => n,
            Level::Exactly(k) => k as usize,
        };
        if needed == 0 || needed > n {
            return Err(Error::InvalidLevel { level: self.to_string(), needed, n: n as u32 });
        }
        Ok(needed)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::One => f.write_str("one"),
            Level::Two => f.write_str("two"),
            Level::Three => f.write_str("three"),
            Level::Quorum => f.write_str("quorum"),
            Level::All => f.write_str("all"),
            Level::Exactly(k) => write!(f, "{k}"),
        }
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Level::One),
            "two" => Ok(Level::Two),
            "three" => Ok(Level::Three),
            "quorum" => Ok(Level::Quorum),
            "all" => Ok(Level::All),
            other => match other.parse::<u8>() {
                Ok(k) if k > 0 => Ok(Level::Exactly(k)),
                _ => Err(format!(
                    "invalid consistency level `{s}`: expected one, two, three, quorum, all or a number from 1"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_replies_table() {
        let cases = [
            (Level::One, 3, Some(1)),
            (Level::Two, 3, Some(2)),
            (Level::Three, 3, Some(3)),
            (Level::Quorum, 3, Some(2)),
            (Level::Quorum, 5, Some(3)),
            (Level::Quorum, 1, Some(1)),
            (Level::All, 5, Some(5)),
            (Level::Exactly(4), 5, Some(4)),
            (Level::Three, 2, None),
            (Level::Exactly(4), 3, None),
            (Level::Exactly(0), 3, None),
        ];
        for (level, n, want) in cases {
            assert_eq!(level.required(n).ok(), want, "{level} with n={n}");
        }
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["one", "two", "three", "quorum", "all", "4"] {
            assert_eq!(s.parse::<Level>().unwrap().to_string(), s);
        }
        assert_eq!("QUORUM".parse::<Level>().unwrap(), Level::Quorum);
        assert!("0".parse::<Level>().is_err());
        assert!("most".parse::<Level>().is_err());
    }
}
