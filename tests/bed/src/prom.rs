//! A strict parser of Prometheus' text exposition format 0.0.4, for tests of `/metrics`
//! (the crates.io parsers keep label values escaped and skip lines they cannot read).

use std::collections::{BTreeMap, BTreeSet};

/// Label (name, value) pairs in the order written.
pub type LabelSet = Vec<(String, String)>;

#[derive(Debug, Default)]
pub struct Family {
    pub help: Option<String>,
    pub kind: Option<String>,
    pub samples: usize,
}

#[derive(Debug)]
pub struct Sample {
    /// The family it belongs to (`x` for `x_bucket`, `x_sum`, `x_count` of histogram `x`).
    pub family: String,
    pub name: String,
    pub labels: LabelSet,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub families: BTreeMap<String, Family>,
    pub samples: Vec<Sample>,
}

pub fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

pub fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

pub fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Err(format!("bad float {s:?}"))
        }
        _ => s.parse().map_err(|e| format!("bad float {s:?}: {e}")),
    }
}

/// Unescapes HELP text: only `\\` and `\n`.
pub fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut c = s.chars();
    while let Some(ch) = c.next() {
        if ch == '\\' {
            match c.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in HELP")),
            }
        } else {
            out.push(ch);
        }
    }
    Ok(out)
}

/// `{name="value",...}` at the start of `s`; returns the labels and the rest.
pub fn parse_labels(s: &str) -> Result<(LabelSet, &str), String> {
    let mut labels = LabelSet::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
}

/// Parses `text`, enforcing: lines end in `\n`; one HELP and one TYPE per family, both
/// before its samples; every sample has a TYPEd family; a family's lines are one group;
/// histogram buckets carry `le`, `_sum` and `_count` do not.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("last line not terminated".into());
    }
    let mut current: Option<String> = None;
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut enter = |fam: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() == Some(fam) {
            return Ok(());
        }
        if closed.contains(fam) {
            return Err(format!("family {fam} split into two groups"));
        }
        if let Some(c) = current.take() {
            closed.insert(c);
        }
        *current = Some(fam.to_owned());
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.contains('\r') {
            return Err(err("carriage return".into()));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let (word, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            if word != "HELP" && word != "TYPE" {
                continue;
            }
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            enter(name, &mut current).map_err(err)?;
            let f = p.families.entry(name.to_owned()).or_default();
            if f.samples > 0 {
                return Err(err("HELP or TYPE after samples".into()));
            }
            if word == "HELP" {
                if f.help.is_some() {
                    return Err(err("second HELP".into()));
                }
                f.help = Some(unescape_help(arg).map_err(err)?);
            } else {
                if f.kind.is_some() {
                    return Err(err("second TYPE".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(err(format!("bad type {arg:?}")));
                }
                f.kind = Some(arg.to_owned());
            }
            continue;
        }
        let name_end = line
            .find(['{', ' ', '\t'])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        if !rest.starts_with([' ', '\t']) {
            return Err(err("no blank before the value".into()));
        }
        let mut fields = rest.split_ascii_whitespace();
        let value =
            parse_float(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| err(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let kind_of = |f: &str| p.families.get(f).and_then(|f| f.kind.clone());
        let family = match kind_of(name).as_deref() {
            Some("histogram" | "summary") => {
                return Err(err("bare sample of a histogram or summary".into()))
            }
            Some(_) => name.to_owned(),
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (kind_of(base).as_deref() == Some("histogram")).then(|| base.to_owned())
                })
                .ok_or_else(|| err("sample without TYPE".into()))?,
        };
        if family != name {
            let has_le = labels.iter().any(|(k, _)| k == "le");
            if name.ends_with("_bucket") != has_le {
                return Err(err("le on a bucket only, and on every bucket".into()));
            }
        }
        enter(&family, &mut current).map_err(err)?;
        if let Some(f) = p.families.get_mut(&family) {
            f.samples += 1;
        }
        p.samples.push(Sample {
            family,
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_rejects_what_it_should() {
        let bad = [
            "x 1\n",                                      // no TYPE
            "# TYPE x gauge\nx{a=\"b\\q\"} 1\n",          // bad escape
            "# TYPE x gauge\nx{a=\"b} 1\n",               // unterminated
            "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n",     // label twice
            "# TYPE x gauge\n# TYPE y gauge\ny 1\nx 1\n", // x split
            "# TYPE x gauge\nx 1\n# HELP x late\n",       // HELP after samples
            "# TYPE h histogram\nh_bucket{a=\"1\"} 1\n",  // bucket without le
            "# TYPE x gauge\nx one\n",                    // bad value
            "# TYPE x gauge\nx 1",                        // unterminated line
        ];
        for text in bad {
            assert!(parse(text).is_err(), "accepted {text:?}");
        }
        let p = parse("# HELP x a \\\\ b\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\",} +Inf 17\n")
            .expect("valid text");
        assert_eq!(p.families["x"].help.as_deref(), Some("a \\ b"));
        assert_eq!(p.samples[0].label("a"), Some("q\"\\\n"));
        assert!(p.samples[0].value.is_infinite());
    }
}
