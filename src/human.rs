//! Durations, instants and sizes as people read them (`3m12s`, `14:05:09 UTC`, `8G`), and the
//! same units read back from the command line (`--timeout 10m`, `--memory 8G`).

/// The wall clock in ms since the Unix epoch (what ages count up to).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A compact duration: `850ms` under a second, `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// A rough duration for an estimate: `<1m`, `~4m`, `~2h05m`, `~3d04h` (the console's, so both
/// say it alike); the same, short, for a table's column.
pub use berth_tui::model::{about, eta_cell};

/// When a waiting request is expected to start, from `eta_ms` (an estimate) or `after_ms` (the
/// estimate stopped first), at `now_ms`: `in ~4m`, `now`, `later than in ~1d00h`; `None`
/// without either.
pub fn eta(eta_ms: Option<u64>, after_ms: Option<u64>, now_ms: u64) -> Option<String> {
    match (eta_ms, after_ms) {
        (_, Some(after)) => Some(format!(
            "later than in {}",
            about(after.saturating_sub(now_ms))
        )),
        (Some(at), None) if at <= now_ms => Some("now".to_owned()),
        (Some(at), None) => Some(format!("in {}", about(at - now_ms))),
        (None, None) => None,
    }
}

/// How long ago `then_ms` was at `now_ms` (`0s` when the clocks disagree the other way).
/// Whole seconds at least (`0s`, `12s`, `3m12s`).
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let ms = now_ms.saturating_sub(then_ms);
    if ms < 1000 {
        "0s".to_owned()
    } else {
        duration(ms)
    }
}

/// An instant in UTC: `14:05:09 UTC` on the day of `now_ms`, else with its date
/// (`2026-12-04 14:05:09 UTC`).
pub fn instant(ms: u64, now_ms: u64) -> String {
    let (day, now_day) = (ms / 86_400_000, now_ms / 86_400_000);
    let s = (ms / 1000) % 86_400;
    let clock = format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60);
    if day == now_day {
        format!("{clock} UTC")
    } else {
        let (y, m, d) = civil_from_days(day as i64);
        format!("{y:04}-{m:02}-{d:02} {clock} UTC")
    }
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Memory in MiB: `512M`, `8G`, `1.5G`, `2T`.
pub fn mib(m: u64) -> String {
    if m >= 1 << 20 && m.is_multiple_of(1 << 20) {
        format!("{}T", m >> 20)
    } else if m >= 1024 && m.is_multiple_of(1024) {
        format!("{}G", m / 1024)
    } else if m >= 1024 {
        format!("{:.1}G", m as f64 / 1024.0)
    } else {
        format!("{m}M")
    }
}

/// A duration as given on the command line: `90s`, `10m`, `2h`, `1d`, `1h30m`, or plain
/// seconds (`600`); in ms.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a duration (90s, 10m, 2h, 1h30m, 1d, or seconds)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(|n| n.saturating_mul(1000))
            .map_err(|_| bad());
    }
    let (mut total, mut digits) = (0u64, String::new());
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit_ms: u64 = match c {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit_ms));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// A memory size as given on the command line: `512M`, `8G`, `1T`, or plain MiB; in MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a memory size (512M, 8G, 1T, or MiB)");
    let t = s.trim();
    let (digits, scale) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'T' | 't')) => (&t[..i], 1 << 20),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(scale).filter(|&m| m > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(192_000), "3m12s");
        assert_eq!(duration(7_500_000), "2h05m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(age(10_000, 20_000), "0s");
        assert_eq!(age(65_500, 0), "1m05s");
    }

    #[test]
    fn estimates_read_to_the_minute() {
        assert_eq!(about(59_999), "<1m");
        assert_eq!(about(4 * 60_000 + 59_000), "~4m");
        assert_eq!(about(2 * 3_600_000 + 5 * 60_000), "~2h05m");
        assert_eq!(about(3 * 86_400_000 + 4 * 3_600_000), "~3d04h");
        let now = 1_000_000;
        assert_eq!(
            eta(Some(now + 240_000), None, now).as_deref(),
            Some("in ~4m")
        );
        assert_eq!(eta(Some(now - 1), None, now).as_deref(), Some("now"));
        assert_eq!(
            eta(None, Some(now + 86_400_000), now).as_deref(),
            Some("later than in ~1d00h")
        );
        assert_eq!(eta(None, None, now), None);
        assert_eq!(eta_cell(Some(now + 240_000), None, now), "~4m");
        assert_eq!(eta_cell(None, Some(now + 60_000), now), ">~1m");
        assert_eq!(eta_cell(None, None, now), "-");
    }

    #[test]
    fn instants_carry_their_date_unless_today() {
        // 2026-12-05 14:05:09 UTC.
        let t = 1_796_479_509_000;
        assert_eq!(instant(t, t + 60_000), "14:05:09 UTC");
        assert_eq!(instant(t, t + 86_400_000), "2026-12-05 14:05:09 UTC");
        assert_eq!(instant(0, 1), "00:00:00 UTC");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn sizes_and_durations_parse_back() {
        assert_eq!(mib(512), "512M");
        assert_eq!(mib(8192), "8G");
        assert_eq!(mib(1536), "1.5G");
        assert_eq!(parse_mib("8G"), Ok(8192));
        assert_eq!(parse_mib("4096"), Ok(4096));
        assert!(parse_mib("8X").is_err());
        assert!(parse_mib("0").is_err());
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("600"), Ok(600_000));
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }
}
