//! Reading `/metrics` pages.

use std::collections::BTreeMap;

/// One scrape of a `/metrics` page: every sample by its series (name and labels).
#[derive(Debug, Default, Clone)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Scrapes `{base}/metrics`.
    pub async fn of(http: &reqwest::Client, base: &str) -> anyhow::Result<Scrape> {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }

    pub fn parse(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sum of every series of metric `name` whose labels contain `label` (e.g.
    /// `sink="postgres"`; empty: all).
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
                metric == name && labels.contains(label)
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// The sum of the samples of `series` on the `/metrics` page at `port` of 127.0.0.1:
/// `name` for every label set, or `name{label="value"}` for those with that label.
pub async fn metric(port: u16, series: &str) -> anyhow::Result<f64> {
    let (name, label) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (series, ""),
    };
    let scrape = Scrape::of(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await?;
    Ok(scrape.sum(name, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_take_exact_names_and_filter_by_label() {
        let scrape = Scrape::parse(
            "# HELP event_retry Retries\n\
             event_retry_total{type=\"kafka\"} 2\n\
             event_retry_total{type=\"record\"} 3\n\
             event_retry_seconds 100\n\
             event_retry_total_other 99\n\
             processor_active_tasks 4\n",
        );
        assert_eq!(scrape.sum("event_retry_total", ""), 5.0);
        assert_eq!(scrape.sum("event_retry_total", "type=\"record\""), 3.0);
        assert_eq!(scrape.sum("processor_active_tasks", ""), 4.0);
        assert_eq!(scrape.sum("event_retry", ""), 0.0);
    }
}
