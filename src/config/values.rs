//! The values of options that clap does not parse itself: time bounds, sizes, switches.

use std::time::Duration;

/// A time bound: a duration such as `30s` or `500ms`, longer than zero (a zero bound would
/// cut every connection at once).
pub fn parse_bound(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

/// `daemon --idle-exit`: a duration longer than zero, or `off` ([`Duration::MAX`]: never).
pub fn parse_idle_exit(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "off" | "never" => Ok(Duration::MAX),
        text => parse_bound(text),
    }
}

/// `1048576`, `64KiB`, `256MiB`, `1GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 256MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A switch's value from a variable: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`, and
/// empty for off (so that `GOREMOTECACHE_STATS=` in a CI file turns it off, not the build).
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        other => Err(format!(
            "{other:?} is not a switch value: use true or false"
        )),
    }
}

/// `serve --max-size`: a bound, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSize {
    Bytes(u64),
    Off,
}

/// A size as [`parse_size`] reads it, larger than zero, or `off`.
pub fn parse_max_size(text: &str) -> Result<MaxSize, String> {
    match text.trim() {
        "off" => Ok(MaxSize::Off),
        text => match parse_size(text)? {
            0 => Err("must be larger than 0 (`off` keeps everything)".into()),
            bytes => Ok(MaxSize::Bytes(bytes)),
        },
    }
}

/// A fraction from 0.0 to 1.0 (`--remote-fault-rate`). Never NaN, so equality is total.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Fraction(pub f64);

impl Eq for Fraction {}

/// A number from 0.0 to 1.0.
pub fn parse_fraction(text: &str) -> Result<Fraction, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(Fraction(p)),
        _ => Err(format!(
            "{text:?} is not a fraction from 0.0 to 1.0, such as 0.1"
        )),
    }
}
