//! How values are written in the file where serde's own form is not the one wanted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{DmPolicy, GroupPolicy, LogFormat, Synchronous, TelegramMode, TokenLimitField};

/// Accepts a value in its own type or as a string that parses to it.
pub(super) fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Native(T),
        Text(String),
    }
    match Either::<T>::deserialize(deserializer)? {
        Either::Native(v) => Ok(v),
        Either::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A duration, read as `10s`, `1m 30s` or ISO 8601 `PT10S`, written in the first form.
pub(super) mod duration {
    use std::time::Duration;

    use jiff::SignedDuration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let signed: SignedDuration = text.parse().map_err(serde::de::Error::custom)?;
        Duration::try_from(signed).map_err(|_| serde::de::Error::custom("must not be negative"))
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let signed = SignedDuration::try_from(*value)
            .map_err(|_| serde::ser::Error::custom("is too long to write"))?;
        // `{:#}` is jiff's friendly form (`1m 30s`); it keeps every nanosecond.
        serializer.collect_str(&format_args!("{signed:#}"))
    }
}

macro_rules! from_str_via_serde {
    ($($t:ty),+) => {$(
        impl FromStr for $t {
            type Err = serde_json::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                serde_json::from_value(Value::String(s.to_string()))
            }
        }
    )+};
}
from_str_via_serde!(
    Synchronous,
    LogFormat,
    TelegramMode,
    DmPolicy,
    GroupPolicy,
    TokenLimitField
);
