//! Instants as operators write them (an RFC 3339 date-time, or milliseconds since the epoch) and
//! as the operator API, the CLI and the console show them (RFC 3339, UTC). Parsed here, without
//! a date library: the input is untrusted (query strings) and the calendar needed is small.

/// Milliseconds since the Unix epoch from `text`: a whole number of ms, or an RFC 3339
/// date-time such as `2026-11-29T04:10:00Z` or `2026-11-29T05:10:00.250+01:00`.
pub fn parse(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text:?} is too large a number of milliseconds"));
    }
    rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-29T04:10:00Z) or milliseconds since the epoch"
        )
    })
}

fn rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !valid {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = first3.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (
                rest.get(1..3).and_then(num_of)?,
                rest.get(4..6).and_then(num_of)?,
            );
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn num_of(part: &str) -> Option<i64> {
    part.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| part.parse().ok())?
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An instant as RFC 3339 in UTC with milliseconds: `2026-11-29T04:10:00.250Z`.
pub fn format(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, millis) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_milliseconds_name_the_same_instants() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("1764389400000"), Ok(1_764_389_400_000));
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse("2025-11-29T04:10:00Z"), Ok(1_764_389_400_000));
        assert_eq!(parse("2025-11-29T05:10:00.25+01:00"), Ok(1_764_389_400_250));
        assert_eq!(parse("2024-02-29T00:00:00-00:30"), Ok(1_709_166_600_000));
        for ms in [0, 1_764_389_400_250, 1_709_164_800_000, 951_782_400_000] {
            assert_eq!(parse(&format(ms)), Ok(ms), "{}", format(ms));
        }
        assert_eq!(format(1_764_389_400_250), "2025-11-29T04:10:00.250Z");
    }

    #[test]
    fn anything_else_is_refused_with_what_is_accepted() {
        for bad in [
            "",
            "yesterday",
            "-5",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-11-29T04:10:00",
            "2025-11-29T04:10:00.Z",
            "2025-11-29T04:10:00+1:00",
            "２０２５-11-29T04:10:00Z",
            "99999999999999999999999",
        ] {
            let refused = parse(bad).unwrap_err();
            assert!(refused.contains(bad.trim()), "{refused}");
        }
        assert!(parse("soon").unwrap_err().contains("RFC 3339"));
    }
}
