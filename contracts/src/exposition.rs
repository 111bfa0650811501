//! Reading Prometheus' text exposition format, as far as adrank reads its own pages back: a
//! metric's samples with their labels (the rollout controller and `adrank status`).

use std::collections::BTreeMap;

/// Every sample of the series `name` (exactly: `name_bucket` is another series) with its
/// labels and value; lines that do not parse are skipped.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => match labels(rest) {
                Some(parsed) => parsed,
                None => continue,
            },
            None if rest.starts_with(' ') => (BTreeMap::new(), rest),
            None => continue,
        };
        if let Some(Ok(value)) = value.split_whitespace().next().map(str::parse::<f64>) {
            found.push((labels, value));
        }
    }
    found
}

/// The sum of the samples of `name` whose labels include every pair of `matching`.
pub fn sum(text: &str, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = samples(text, name)
        .into_iter()
        .filter(|(labels, _)| matching.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v)))
        .map(|(_, value)| value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The labels of `a="x",b="y"}` and what follows the closing brace; values unescaped.
pub(crate) fn labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim().to_string(), value);
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let page = "# TYPE a_total counter\na_total{route=\"/v1/rank\",status=\"200\"} 7\n\
                    a_total{route=\"/v1/rank\",status=\"500\"} 2\na_total_x 1\nb 3.5\nb_bucket{le=\"1\"} 9\n";
        assert_eq!(sum(page, "a_total", &[("route", "/v1/rank")]), Some(9.0));
        assert_eq!(sum(page, "a_total", &[("status", "500")]), Some(2.0));
        assert_eq!(sum(page, "a_total", &[("status", "404")]), None);
        assert_eq!(samples(page, "b"), vec![(BTreeMap::new(), 3.5)]);
    }
}
