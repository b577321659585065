use std::time::Duration;

/// No interval or window bosun reads is meaningfully longer; the bound also keeps
/// arithmetic on user input from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses a Kubernetes-style duration such as `90s`, `1m`, `1h30m`, `500ms`.
/// A bare number counts as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds))
            .filter(|d| *d <= MAX_DURATION)
            .ok_or_else(|| format!("invalid duration {text:?}: longer than 30 days"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h)"
                ));
            }
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .filter(|total| *total <= MAX_DURATION)
            .ok_or_else(|| format!("invalid duration {text:?}: longer than 30 days"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        assert!(parse_duration("18446744073709551615s1s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("99999999999999999999999s").is_err());
        assert!(parse_duration("31000000").is_err());
        assert_eq!(parse_duration("720h").unwrap(), Duration::from_secs(720 * 3600));
    }
}
