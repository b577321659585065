//! Reading the API server's own metrics (the Prometheus text format of
//! `GET /metrics`), enough to count requests: samples with their labels, summed
//! over label filters.
//!
//! `apiserver_request_total` of Kubernetes 1.20 has the labels `verb` (upper case:
//! `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY` for server-side apply,
//! `DELETE`, ...), `dry_run` (`All` or empty), `group`, `version`, `resource`,
//! `subresource`, `scope`, `component` and `code`. It has no user label: to count
//! the requests of one client use the audit log
//! ([`ControlPlane::audit_writes`](super::ControlPlane::audit_writes)).

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// The request counter of kube-apiserver.
pub const REQUEST_TOTAL: &str = "apiserver_request_total";

/// One sample: a metric name, its labels and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` of `filters` is on this sample; a filter for
    /// an empty value also matches a missing label, as in PromQL.
    pub fn matches(&self, filters: &[(&str, &str)]) -> bool {
        filters
            .iter()
            .all(|(label, value)| self.labels.get(*label).map_or("", String::as_str) == *value)
    }
}

/// Every sample of a text exposition, in order. Comment lines (`# HELP`,
/// `# TYPE`) are skipped; a timestamp after the value is ignored.
pub fn parse_samples(exposition: &str) -> anyhow::Result<Vec<Sample>> {
    exposition
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| parse_line(line).with_context(|| format!("metrics line {}: {line}", index + 1)))
        .collect()
}

/// The sum of the samples of `metric` that match `filters` (see
/// [`Sample::matches`]); 0 when none does.
///
/// ```
/// let text = "apiserver_request_total{verb=\"APPLY\",resource=\"configmaps\",code=\"201\"} 2\n\
///             apiserver_request_total{verb=\"APPLY\",resource=\"configmaps\",code=\"200\"} 3\n";
/// let total = bosun_devenv::sum_samples(text, "apiserver_request_total", &[("verb", "APPLY")]);
/// assert_eq!(total.unwrap(), 5.0);
/// ```
pub fn sum_samples(exposition: &str, metric: &str, filters: &[(&str, &str)]) -> anyhow::Result<f64> {
    Ok(parse_samples(exposition)?
        .iter()
        .filter(|sample| sample.name == metric && sample.matches(filters))
        .map(|sample| sample.value)
        .sum())
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value after the metric name")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after_labels) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after_labels;
    }
    let value_text = rest.split_whitespace().next().context("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text
            .parse()
            .with_context(|| format!("value {text:?} is not a number"))?,
    };
    Ok(Sample { name, labels, value })
}

/// Parses `label="value",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> anyhow::Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (label, after_name) = text.split_once("=\"").context("a label without =\"value\"")?;
        let mut value = String::new();
        let mut chars = after_name.char_indices();
        let end = loop {
            match chars.next() {
                Some((index, '"')) => break index,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => bail!("label {label}: unfinished escape"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("label {label}: value without a closing quote"),
            }
        };
        labels.insert(label.trim().to_owned(), value);
        text = &after_name[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="APPLY",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="All",group="",resource="configmaps",scope="resource",subresource="",verb="APPLY",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PATCH",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 1.5e+01
apiserver_request_duration_seconds_bucket{le="+Inf",verb="GET"} 4
apiserver_storage_objects{resource="a \"quoted\" \\ name"} 1 1700000000000
up 1
"#;

    #[test]
    fn samples_carry_their_labels() {
        let samples = parse_samples(EXPOSITION).unwrap();
        assert_eq!(samples.len(), 7);
        assert_eq!(samples[0].name, REQUEST_TOTAL);
        assert_eq!(samples[0].labels["verb"], "APPLY");
        assert_eq!(samples[0].labels["dry_run"], "");
        assert_eq!(samples[3].value, 15.0);
        assert_eq!(samples[4].labels["le"], "+Inf");
        assert_eq!(samples[5].labels["resource"], "a \"quoted\" \\ name");
        assert_eq!(samples[5].value, 1.0, "the timestamp is not the value");
        assert!(samples[6].labels.is_empty());
    }

    #[test]
    fn sums_follow_the_filters() {
        let sum = |filters: &[(&str, &str)]| sum_samples(EXPOSITION, REQUEST_TOTAL, filters).unwrap();
        assert_eq!(sum(&[]), 27.0);
        assert_eq!(sum(&[("verb", "APPLY")]), 5.0);
        assert_eq!(sum(&[("verb", "APPLY"), ("dry_run", "")]), 3.0);
        assert_eq!(sum(&[("verb", "APPLY"), ("dry_run", "All")]), 2.0);
        assert_eq!(sum(&[("group", "apps"), ("subresource", "status")]), 7.0);
        assert_eq!(sum(&[("verb", "DELETE")]), 0.0);
        assert_eq!(sum_samples(EXPOSITION, "up", &[("job", "")]).unwrap(), 1.0);
    }

    #[test]
    fn a_broken_line_is_reported() {
        let error = parse_samples("ok 1\nbroken{verb=\"GET} 1\n").unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
        assert!(parse_samples("novalue\n").is_err());
        assert!(parse_samples("x{a=\"1\"} NaNo\n").is_err());
    }
}
