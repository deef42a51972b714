//! The one reader of the Prometheus text exposition format (`name{labels} value [ts]`), for
//! what we scrape: the engines' `/metrics` (the reporter's load) and the router's own (the
//! demo's checks).
//!
//! Hand-written rather than a crate: we read a few samples by name, the parser crates on
//! crates.io are either unmaintained or pull a whole client library, and this one is small
//! enough to test completely. Comments, blank lines and malformed lines are skipped, never an
//! error: a metric we do not understand must not fail a scrape.

/// One sample line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The text between the braces, unparsed (empty without labels).
    labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, unescaped only if it needs no unescaping (label values we
    /// read are numbers and names).
    pub fn label(&self, key: &str) -> Option<&'a str> {
        let mut rest = self.labels;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if rest.is_empty() {
                return None;
            }
            let eq = rest.find('=')?;
            let k = rest[..eq].trim();
            let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let end = closing_quote(after)?;
            if k == key {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
    }

    /// True when the sample has no labels.
    pub fn is_unlabelled(&self) -> bool {
        self.labels.trim().is_empty()
    }
}

/// Index of the first unescaped `"` in `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Parses one line; None for comments, blanks and anything malformed.
pub fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = "";
    if let Some(inner) = rest.strip_prefix('{') {
        // The closing brace is the first one outside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close?;
        labels = &inner[..close];
        rest = &inner[close + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Every well-formed sample of `text`, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

/// The sum of `name` over all its label sets (an engine may report one series per model or
/// data-parallel rank); None when no sample has that exact name.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .filter(|s| s.name == name)
        .fold(None, |acc, s| Some(acc.unwrap_or(0.0) + s.value))
}

/// The value of the unlabelled sample `name`.
pub fn unlabelled(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .find(|s| s.name == name && s.is_unlabelled())
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n\
        vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3.0\n\
        vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2.0\n\
        vllm:num_requests_running_total 99\n\
        vllm:cache_config_info{block_size=\"16\",note=\"a}b,c=\\\"d\\\"\",num_gpu_blocks=\"2000\"} 1.0\n\
        cache_router_workers 4 1700000000\n\
        h_bucket{le=\"+Inf\"} +Inf\n\
        broken{a=\"b\" 1\n\
        novalue\n";

    #[test]
    fn sums_over_label_sets_and_matches_whole_names() {
        assert_eq!(sum(TEXT, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(sum(TEXT, "vllm:num_requests_running_total"), Some(99.0));
        assert_eq!(sum(TEXT, "vllm:num_requests"), None, "no prefix matches");
        assert_eq!(sum(TEXT, "broken"), None, "unclosed braces are skipped");
        assert_eq!(sum(TEXT, "novalue"), None);
    }

    #[test]
    fn labels_with_quoted_braces_commas_and_escapes() {
        let s = samples(TEXT)
            .find(|s| s.name == "vllm:cache_config_info")
            .unwrap();
        assert_eq!(s.label("num_gpu_blocks"), Some("2000"));
        assert_eq!(s.label("block_size"), Some("16"));
        assert_eq!(s.label("note"), Some("a}b,c=\\\"d\\\""));
        assert_eq!(s.label("missing"), None);
        assert_eq!(s.value, 1.0);
    }

    #[test]
    fn unlabelled_samples_timestamps_and_infinities() {
        assert_eq!(unlabelled(TEXT, "cache_router_workers"), Some(4.0));
        assert_eq!(unlabelled(TEXT, "vllm:num_requests_running"), None);
        assert_eq!(sum(TEXT, "h_bucket"), Some(f64::INFINITY));
    }
}
