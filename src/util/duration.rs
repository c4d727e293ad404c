//! [`HumanDuration`]: the one way a duration param is written (`90s`, `30m`, `1h`, `7d`,
//! `0s`), so every param accepts and refuses the same spellings. A param for which zero makes
//! no sense (a cache `ttl`) says so itself.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as the user wrote it: keeps the text (fingerprints and messages show what was
/// written) beside the parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    text: String,
    value: Duration,
}

impl HumanDuration {
    /// Parses `90s`, `30m`, `1h`, `7d`, `1h 30m`; the message names the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(|value| Self {
                text: text.trim().to_owned(),
                value,
            })
            .map_err(|error| format!("invalid duration `{text}`: {error}"))
    }

    /// Like [`parse`](Self::parse), refusing zero.
    pub fn parse_positive(text: &str) -> Result<Self, String> {
        let parsed = Self::parse(text)?;
        if parsed.value.is_zero() {
            return Err(format!("duration `{text}` must be longer than zero"));
        }
        Ok(parsed)
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_everywhere() {
        assert_eq!(
            HumanDuration::parse("90s").unwrap().get(),
            Duration::from_secs(90)
        );
        assert_eq!(HumanDuration::parse(" 7d ").unwrap().as_str(), "7d");
        assert!(HumanDuration::parse("0s").unwrap().get().is_zero());
        assert!(
            HumanDuration::parse_positive("0s")
                .unwrap_err()
                .contains("longer than zero")
        );
        assert!(
            HumanDuration::parse("soon")
                .unwrap_err()
                .contains("invalid duration `soon`")
        );
        let parsed: HumanDuration = serde_json::from_str("\"30m\"").unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "\"30m\"");
    }
}
