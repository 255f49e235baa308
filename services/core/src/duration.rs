//! Durations in definitions: `30s`, `5m`, `1h`, `24h`, `7d` (microseconds internally).

/// Microseconds per second.
pub const SECOND_US: i64 = 1_000_000;
/// Microseconds per minute.
pub const MINUTE_US: i64 = 60 * SECOND_US;
/// Microseconds per hour.
pub const HOUR_US: i64 = 60 * MINUTE_US;
/// Microseconds per day.
pub const DAY_US: i64 = 24 * HOUR_US;

/// Parses `<positive integer><s|m|h|d>` into microseconds.
pub fn parse(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let scale = match unit {
        's' => SECOND_US,
        'm' => MINUTE_US,
        'h' => HOUR_US,
        'd' => DAY_US,
        _ => return None,
    };
    (number > 0).then(|| number.checked_mul(scale)).flatten()
}

/// Formats microseconds back in the largest unit that divides them.
pub fn format(us: i64) -> String {
    for (scale, unit) in [
        (DAY_US, 'd'),
        (HOUR_US, 'h'),
        (MINUTE_US, 'm'),
        (SECOND_US, 's'),
    ] {
        if us % scale == 0 {
            return format!("{}{unit}", us / scale);
        }
    }
    format!("{us}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_nonsense() {
        assert_eq!(parse("5m"), Some(5 * MINUTE_US));
        assert_eq!(parse("24h"), Some(DAY_US));
        assert_eq!(parse("7d"), Some(7 * DAY_US));
        for bad in ["", "h", "0h", "-1h", "1w", "1.5h", "lifetime"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(format(parse("90m").unwrap_or_default()), "90m");
        assert_eq!(format(DAY_US * 2), "2d");
    }
}
