//! `--metrics-push-url`, `--metrics-push-labels` and `--metrics-push-headers`, validated into
//! the [`MetricsPush`] that `crate::cache::push` sends at the end of a run.

use super::{ClientArgs, ConfigError};

/// Where and how to push, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPush {
    pub url: String,
    /// `--metrics-push-labels`, in the order given.
    pub labels: Vec<(String, String)>,
    /// `--metrics-push-headers`, in the order given.
    pub headers: Vec<(String, String)>,
}
impl MetricsPush {
    /// The push that the options ask for; `None` without `--metrics-push-url`.
    pub fn from_args(args: &ClientArgs) -> Result<Option<Self>, ConfigError> {
        let Some(url) = args.metrics_push_url.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if url.is_empty() {
            return Ok(None);
        }
        let err = |flag, reason: String| ConfigError::MetricsPush { flag, reason };
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
            _ => {
                return Err(err(
                    "metrics-push-url",
                    format!(
                        "{url:?} is not an http:// or https:// URL: give the full URL to push to, such as http://pushgateway:9091/metrics/job/build"
                    ),
                ));
            }
        }
        let labels = pairs(args.metrics_push_labels.as_deref(), '=')
            .map_err(|reason| err("metrics-push-labels", reason))?;
        for (name, _) in &labels {
            check_label_name(name).map_err(|reason| err("metrics-push-labels", reason))?;
        }
        let headers = pairs(args.metrics_push_headers.as_deref(), ':')
            .map_err(|reason| err("metrics-push-headers", reason))?;
        for (name, value) in &headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(
                    "metrics-push-headers",
                    format!("{name:?} is not an HTTP header name: write 'Name: value'"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(err(
                    "metrics-push-headers",
                    format!("the value of {name} holds characters an HTTP header cannot"),
                ));
            }
        }
        Ok(Some(Self {
            url: url.to_string(),
            labels,
            headers,
        }))
    }
}

/// `a=b,c=d` (or `A: b,C: d` with `':'`) as pairs; empty items are skipped.
fn pairs(text: Option<&str>, separator: char) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in text.unwrap_or("").split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = item.split_once(separator) else {
            return Err(format!(
                "{:?} has no {separator:?}: write NAME{separator}VALUE pairs separated by commas",
                item.trim()
            ));
        };
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a label name: use A-Z a-z 0-9 and _, not starting with a digit"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "{name:?} starts with __, which Prometheus reserves: choose another name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_label_names_are_checked() {
        assert_eq!(
            pairs(Some("repo=api, branch = main,"), '=').unwrap(),
            vec![
                ("repo".to_string(), "api".to_string()),
                ("branch".to_string(), "main".to_string())
            ]
        );
        assert!(pairs(Some("repo"), '=').is_err());
        assert_eq!(
            pairs(Some("Authorization: Bearer a:b"), ':').unwrap(),
            vec![("Authorization".to_string(), "Bearer a:b".to_string())]
        );
        for bad in ["", "1x", "a-b", "__name", "é"] {
            assert!(check_label_name(bad).is_err(), "{bad:?}");
        }
        for good in ["repo", "_x", "Branch_2"] {
            check_label_name(good).unwrap();
        }
    }
}
