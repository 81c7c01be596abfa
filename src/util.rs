//! Small helpers with no better home.

use std::time::{SystemTime, UNIX_EPOCH};

/// XEP-0082 DateTime in UTC: `YYYY-MM-DDThh:mm:ssZ`.
pub fn xmpp_datetime(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parse a XEP-0082 DateTime (`YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`) to
/// microseconds since the epoch.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return None;
        }
        let six: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(6)
            .collect();
        micros = six.parse().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset = match rest {
        "Z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs * 1_000_000 + micros)
}

/// XEP-0082 DateTime with microseconds, for archive timestamps.
pub fn xmpp_datetime_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let base = xmpp_datetime(UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64));
    format!("{}.{frac:06}Z", &base[..19])
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(xmpp_datetime(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(xmpp_datetime(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(xmpp_datetime(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_datetimes_both_ways() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        assert_eq!(
            parse_datetime("2000-02-29T01:00:00.5+01:00"),
            Some(951_782_400_500_000)
        );
        assert_eq!(
            parse_datetime("2026-11-18T11:06:40.123456Z"),
            Some(1_795_000_000_123_456)
        );
        assert_eq!(
            xmpp_datetime_micros(1_795_000_000_123_456),
            "2026-11-18T11:06:40.123456Z"
        );
        for bad in [
            "",
            "2026-11-18",
            "2026-13-01T00:00:00Z",
            "2026-11-18T11:06:40",
            "2026-11-18T11:06:40+0100",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }
}

/// The bare JID of a full or bare JID. jid 0.12's `to_bare` builds it with
/// `format!`; cloning and truncating costs a fraction of that (it was a
/// tenth of the instructions of a routed message, four calls each).
pub trait Bare {
    fn bare(&self) -> jid::BareJid;
}

impl Bare for jid::Jid {
    fn bare(&self) -> jid::BareJid {
        self.clone().into_bare()
    }
}

impl Bare for jid::FullJid {
    fn bare(&self) -> jid::BareJid {
        self.clone().into_bare()
    }
}

#[cfg(test)]
mod bare_tests {
    use super::Bare;

    #[test]
    fn bare_drops_only_the_resource() {
        let full: jid::FullJid = "Alice@Example.org/phone/1".parse().unwrap();
        assert_eq!(full.bare(), full.bare());
        assert_eq!(full.bare().as_str(), "alice@example.org");
        let j: jid::Jid = "example.org/x".parse().unwrap();
        assert_eq!(j.bare(), j.bare());
        let j: jid::Jid = "bob@example.org".parse().unwrap();
        assert_eq!(j.bare(), j.bare());
    }
}
