//! Fix times as devices write them: seconds or milliseconds since epoch,
//! ISO 8601 (RFC 3339), or Traccar's `yyyy-MM-dd HH:mm:ss` (UTC), read
//! into the contract's milliseconds since epoch.

use time::{
    OffsetDateTime, PrimitiveDateTime,
    format_description::{BorrowedFormatItem, well_known::Iso8601},
    macros::format_description,
};

/// Below this an epoch number is seconds, above it milliseconds: 1e11 s
/// is the year 5138, 1e11 ms is March 1973, so no real fix is ambiguous.
const SECONDS_BELOW: f64 = 1e11;

const SPACED: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");

/// Milliseconds since epoch, or `None` for text that is no time at all.
pub fn parse_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(n) = text.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let ms = if n < SECONDS_BELOW { n * 1000.0 } else { n };
        // Bounded above by the parse of a finite f64; far-off values fail the time window later.
        return Some(ms.round().min(i64::MAX as f64) as i64);
    }
    let at = OffsetDateTime::parse(text, &Iso8601::DEFAULT)
        .ok()
        .or_else(|| PrimitiveDateTime::parse(text, SPACED).ok().map(PrimitiveDateTime::assume_utc))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn every_form_devices_send() {
        assert_eq!(parse_ms("1732200000"), Some(1_732_200_000_000));
        assert_eq!(parse_ms("1732200000.25"), Some(1_732_200_000_250));
        assert_eq!(parse_ms("1732200000123"), Some(1_732_200_000_123));
        assert_eq!(parse_ms("2024-11-21T14:40:00Z"), Some(1_732_200_000_000));
        assert_eq!(parse_ms("2024-11-21T14:40:00.123Z"), Some(1_732_200_000_123));
        assert_eq!(parse_ms("2024-11-21T23:40:00+09:00"), Some(1_732_200_000_000));
        assert_eq!(parse_ms("2024-11-21 14:40:00"), Some(1_732_200_000_000));
        for bad in ["", "yesterday", "NaN", "inf", "-5", "2024-13-01T00:00:00Z"] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }
}
