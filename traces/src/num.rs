//! Number parsing for the text importers: decimal fields read as exact thousandths, without floats or allocation.

/// Parses a decimal like `-1`, `3477`, `1.75` or `.5` as thousandths (so seconds become
/// milliseconds and gigabytes become megabytes exactly). Digits past the third decimal are
/// dropped. None if the text is not such a number or does not fit in an `i64` once scaled.
pub(crate) fn parse_milli(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in whole {
        value = value
            .checked_mul(10)?
            .checked_add(i64::from(ascii_digit(b)?))?;
    }
    let mut thousandths: i64 = 0;
    for (i, &b) in fraction.iter().enumerate() {
        let digit = i64::from(ascii_digit(b)?);
        if i < 3 {
            thousandths = thousandths * 10 + digit;
        }
    }
    for _ in fraction.len()..3 {
        thousandths *= 10;
    }
    let scaled = value.checked_mul(1000)?.checked_add(thousandths)?;
    Some(if negative { -scaled } else { scaled })
}

/// Parses a whole number (no fraction, or a fraction of zeros such as `4.0`).
pub(crate) fn parse_whole(text: &[u8]) -> Option<i64> {
    let milli = parse_milli(text)?;
    (milli % 1000 == 0).then_some(milli / 1000)
}

fn ascii_digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decimals_as_thousandths() {
        let cases: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("-1", Some(-1000)),
            ("3477", Some(3_477_000)),
            ("1.75", Some(1750)),
            (".5", Some(500)),
            ("2.", Some(2000)),
            ("0.0005", Some(0)),
            ("+7", Some(7000)),
            ("", None),
            ("-", None),
            (".", None),
            ("1e3", None),
            ("1.2.3", None),
            ("9223372036854775807", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_milli(text.as_bytes()), *want, "{text:?}");
        }
    }

    #[test]
    fn whole_numbers_reject_fractions() {
        assert_eq!(parse_whole(b"4"), Some(4));
        assert_eq!(parse_whole(b"4.0"), Some(4));
        assert_eq!(parse_whole(b"-1"), Some(-1));
        assert_eq!(parse_whole(b"4.5"), None);
    }
}
