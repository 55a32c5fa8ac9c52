//! `[[monitors]]`: type and method, port, path and headers, timing, expected codes and body,
//! and which fields apply to which type. The http-only fields (`method` other than tcp's
//! `connection_established`, `path`, `header`, `expected_codes`, `expected_body`,
//! `follow_redirects`, `allow_insecure`) are refused on the other types rather than ignored,
//! so that a monitor never looks as if it checked something it does not; `icmp_ping` also
//! refuses a `port` (ICMP has none).

use super::FieldErrors;
use std::collections::HashMap;

use super::{name_ok, port};
use crate::config::{
    defaults::{
        DEFAULT_EXPECTED_CODES, DEFAULT_HTTP_METHOD, DEFAULT_MONITOR_PATH, TCP_MONITOR_METHOD,
    },
    raw::RawMonitor,
    types::{CodePattern, HttpMethod, Monitor, MonitorKind},
    units::Seconds,
};

/// The valid monitors, and the name of every monitor (valid or not) with its index, which
/// pools refer to.
pub(super) fn validate(
    raw: &[RawMonitor],
    errors: &mut FieldErrors,
) -> (Vec<Monitor>, HashMap<String, usize>) {
    let mut monitors = Vec::new();
    let mut names = HashMap::new();
    for (mi, m) in raw.iter().enumerate() {
        if let Some(mon) = monitor(mi, m, &mut names, errors) {
            monitors.push(mon);
        }
    }
    (monitors, names)
}

fn monitor(
    mi: usize,
    m: &RawMonitor,
    names: &mut HashMap<String, usize>,
    errors: &mut FieldErrors,
) -> Option<Monitor> {
    let f = format!("monitors[{mi}]");
    let before = errors.len();
    name_ok(&m.name, &format!("{f}.name"), errors);
    if !m.name.is_empty() {
        if let Some(first) = names.insert(m.name.clone(), mi) {
            errors.conflict(
                format!("{f}.name"),
                format!("\"{}\" is already the name of monitors[{first}]", m.name),
                "monitor names must be unique",
            );
        }
    }
    let kind = kind(&f, &m.kind, errors);
    let is_http = kind.is_some_and(MonitorKind::is_http);
    let method = method(&f, kind, m.method.as_deref(), errors);
    let port = if m.port == 0 {
        Some(0)
    } else if kind.is_some_and(|k| !k.has_port()) {
        errors.invalid(
            format!("{f}.port"),
            "icmp_ping monitors send ICMP echo requests, which have no port",
            "remove it, or use type \"udp_icmp\" to check a UDP port",
        );
        None
    } else {
        port(m.port, &format!("{f}.port"), errors)
    };
    let path = m
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_MONITOR_PATH.into());
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        errors.invalid(
            format!("{f}.path"),
            format!("\"{path}\" is not a path"),
            "start it with '/' and leave out spaces",
        );
    }
    if !is_http && m.path.is_some() {
        errors.invalid(
            format!("{f}.path"),
            "only http and https monitors send a path",
            "remove it or change type",
        );
    }
    let header = header(&f, m, is_http, errors);
    let (timeout, interval) = timing(&f, m, errors);
    let expected_codes = expected_codes(&f, m.expected_codes.as_deref(), is_http, errors);
    http_only(&f, m, kind, errors);
    if errors.len() > before {
        return None;
    }
    Some(Monitor {
        name: m.name.clone(),
        description: m.description.clone(),
        kind: kind?,
        method,
        port: port?,
        path,
        header,
        timeout: timeout?,
        retries: m.retries,
        interval: interval?,
        expected_codes: expected_codes?,
        expected_body: m.expected_body.clone().unwrap_or_default(),
        follow_redirects: m.follow_redirects,
        allow_insecure: m.allow_insecure,
        consecutive_up: m.consecutive_up,
        consecutive_down: m.consecutive_down,
    })
}

fn kind(f: &str, kind: &str, errors: &mut FieldErrors) -> Option<MonitorKind> {
    MonitorKind::parse(kind).or_else(|| {
        errors.invalid(
            format!("{f}.type"),
            format!("\"{kind}\" is not a monitor type"),
            "use \"http\", \"https\", \"tcp\", \"udp_icmp\", \"icmp_ping\" or \"smtp\"",
        );
        None
    })
}

fn method(
    f: &str,
    kind: Option<MonitorKind>,
    method: Option<&str>,
    errors: &mut FieldErrors,
) -> HttpMethod {
    match (kind, method) {
        (Some(MonitorKind::Tcp), None) => HttpMethod::Get,
        (Some(MonitorKind::Tcp), Some(TCP_MONITOR_METHOD)) => HttpMethod::Get,
        (Some(MonitorKind::Tcp), Some(other)) => {
            errors.invalid(
                format!("{f}.method"),
                format!("\"{other}\" does not apply to tcp monitors"),
                format!("use \"{TCP_MONITOR_METHOD}\""),
            );
            HttpMethod::Get
        }
        (Some(k @ (MonitorKind::UdpIcmp | MonitorKind::IcmpPing | MonitorKind::Smtp)), Some(m)) => {
            errors.invalid(
                format!("{f}.method"),
                format!("\"{m}\" does not apply to {k} monitors, which have no method"),
                "remove it",
            );
            HttpMethod::Get
        }
        (_, None | Some(DEFAULT_HTTP_METHOD)) => HttpMethod::Get,
        (_, Some("HEAD")) => HttpMethod::Head,
        (_, Some(other)) => {
            errors.invalid(
                format!("{f}.method"),
                format!("\"{other}\" is not supported"),
                "use \"GET\" or \"HEAD\"",
            );
            HttpMethod::Get
        }
    }
}

/// The request headers as (name, value) pairs, one per value.
fn header(
    f: &str,
    m: &RawMonitor,
    is_http: bool,
    errors: &mut FieldErrors,
) -> Vec<(String, String)> {
    let mut header = Vec::new();
    for (k, vs) in &m.header {
        if k.is_empty() || k.contains([':', ' ', '\r', '\n']) {
            errors.invalid(
                format!("{f}.header"),
                format!("\"{k}\" is not a header name"),
                "use a name without ':', spaces or line breaks",
            );
        }
        if !is_http {
            errors.invalid(
                format!("{f}.header.{k}"),
                "only http and https monitors send headers",
                "remove it or change type",
            );
        }
        for v in vs {
            if v.contains(['\r', '\n']) {
                errors.invalid(
                    format!("{f}.header.{k}"),
                    "a value has a line break",
                    "values must be one line",
                );
            }
            header.push((k.clone(), v.clone()));
        }
    }
    header
}

/// Timeout and interval (a check must end before the next starts), retries and the
/// consecutive-result thresholds.
fn timing(f: &str, m: &RawMonitor, errors: &mut FieldErrors) -> (Option<Seconds>, Option<Seconds>) {
    let timeout = Seconds::check(m.timeout, &format!("{f}.timeout"), errors);
    let interval = Seconds::check(m.interval, &format!("{f}.interval"), errors);
    if let (Some(t), Some(i)) = (timeout, interval) {
        if t > i {
            errors.invalid(
                format!("{f}.timeout"),
                format!(
                    "{}s is longer than the interval ({}s), so checks would overlap",
                    m.timeout, m.interval
                ),
                "lower the timeout or raise the interval",
            );
        }
    }
    if m.retries > 5 {
        errors.invalid(
            format!("{f}.retries"),
            format!("{} is out of range", m.retries),
            "use 0-5",
        );
    }
    for (v, n) in [
        (m.consecutive_up, "consecutive_up"),
        (m.consecutive_down, "consecutive_down"),
    ] {
        if v > 100 {
            errors.invalid(
                format!("{f}.{n}"),
                format!("{v} is out of range"),
                "use 0-100 (0 means 1)",
            );
        }
    }
    (timeout, interval)
}

fn expected_codes(
    f: &str,
    codes: Option<&str>,
    is_http: bool,
    errors: &mut FieldErrors,
) -> Option<CodePattern> {
    match (codes, is_http) {
        (Some(c), true) => CodePattern::parse(c).or_else(|| {
            errors.invalid(
                format!("{f}.expected_codes"),
                format!("\"{c}\" is not a status pattern"),
                "use three characters, digits or x, e.g. \"200\" or \"2xx\"",
            );
            None
        }),
        (Some(_), false) => {
            errors.invalid(
                format!("{f}.expected_codes"),
                "only http and https monitors check status codes",
                "remove it",
            );
            None
        }
        (None, _) => CodePattern::parse(DEFAULT_EXPECTED_CODES),
    }
}

/// Fields that only http(s) or only https monitors use.
fn http_only(f: &str, m: &RawMonitor, kind: Option<MonitorKind>, errors: &mut FieldErrors) {
    let is_http = kind.is_some_and(MonitorKind::is_http);
    if m.expected_body.is_some() && !is_http {
        errors.invalid(
            format!("{f}.expected_body"),
            "only http and https monitors read a body",
            "remove it",
        );
    }
    if m.follow_redirects && !is_http {
        errors.invalid(
            format!("{f}.follow_redirects"),
            "only applies to http and https monitors",
            "remove it or change type",
        );
    }
    if m.allow_insecure && kind != Some(MonitorKind::Https) {
        errors.invalid(
            format!("{f}.allow_insecure"),
            "only applies to https monitors",
            "remove it or change type",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Config, HttpMethod, MonitorKind};
    use std::path::Path;

    #[test]
    fn monitor_defaults_follow_cloudflare() {
        let c = Config::parse(&with_monitor(""), Path::new("t")).expect("valid");
        let m = &c.monitors[0];
        assert_eq!(m.kind, MonitorKind::Http);
        assert_eq!(m.method, HttpMethod::Get);
        assert_eq!((m.port, m.path.as_str(), m.retries), (0, "/", 2));
        assert_eq!(m.timeout.get(), std::time::Duration::from_secs(5));
        assert_eq!(m.interval.get(), std::time::Duration::from_secs(60));
        assert_eq!(m.expected_codes.to_string(), "200");
        assert!(!m.follow_redirects && !m.allow_insecure && m.expected_body.is_empty());
    }

    #[test]
    fn cloudflare_spectrum_example_parses() {
        let body = "description = \"Spectrum Health Check\"\ntype = \"tcp\"\nport = 2048\ninterval = 30\nretries = 2\ntimeout = 5\nmethod = \"connection_established\"";
        let c = Config::parse(&with_monitor(body), Path::new("t")).expect("valid");
        assert_eq!(c.monitors[0].kind, MonitorKind::Tcp);
        assert_eq!(c.monitors[0].port, 2048);
    }

    #[test]
    fn sub_second_interval_allowed() {
        let c = Config::parse(
            &with_monitor("interval = 0.25\ntimeout = 0.2"),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(
            c.monitors[0].interval.get(),
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn monitor_name_required() {
        let text = GOOD.replacen("[[pools]]", "[[monitors]]\ntype = \"tcp\"\n[[pools]]", 1);
        assert_one(&errors_of(&text), "monitors[0].name");
    }

    #[test]
    fn monitor_names_unique() {
        let text = GOOD.replacen("[[pools]]", &format!("{MON}{MON}[[pools]]"), 1);
        assert_one(&errors_of(&text), "monitors[1].name");
    }

    #[test]
    fn monitor_type_known() {
        assert_one(&monitor_errors("type = \"icmp\""), "monitors[0].type");
        let e = monitor_errors("type = \"udp\"");
        assert!(
            e[0].contains("\"udp_icmp\", \"icmp_ping\" or \"smtp\""),
            "{e:?}"
        );
    }

    /// Cloudflare's three other types parse with the shared defaults (timeout 5 s, interval
    /// 60 s, retries 2, port 0 = the origin's) and no http fields.
    #[test]
    fn udp_icmp_icmp_ping_and_smtp_parse_with_defaults() {
        for (ty, kind) in [
            ("udp_icmp", MonitorKind::UdpIcmp),
            ("icmp_ping", MonitorKind::IcmpPing),
            ("smtp", MonitorKind::Smtp),
        ] {
            let c = Config::parse(&with_monitor(&format!("type = \"{ty}\"")), Path::new("t"))
                .unwrap_or_else(|e| panic!("{ty}: {e}"));
            let m = &c.monitors[0];
            assert_eq!(m.kind, kind);
            assert_eq!(m.kind.to_string(), ty);
            assert_eq!((m.port, m.retries), (0, 2), "{ty}");
            assert_eq!(m.timeout.get(), std::time::Duration::from_secs(5));
            assert_eq!(m.interval.get(), std::time::Duration::from_secs(60));
            assert!(m.header.is_empty() && m.expected_body.is_empty(), "{ty}");
        }
        let body = "type = \"smtp\"\nport = 25\ninterval = 10\ntimeout = 3\nretries = 1\nconsecutive_up = 2\nconsecutive_down = 3\ndescription = \"mail\"";
        let c = Config::parse(&with_monitor(body), Path::new("t")).expect("valid");
        let m = &c.monitors[0];
        assert_eq!(
            (m.port, m.retries, m.consecutive_up, m.consecutive_down),
            (25, 1, 2, 3)
        );
        assert_eq!(m.description, "mail");
        let c = Config::parse(
            &with_monitor("type = \"udp_icmp\"\nport = 53"),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(c.monitors[0].port, 53);
    }

    #[test]
    fn icmp_ping_has_no_port() {
        let e = monitor_errors("type = \"icmp_ping\"\nport = 80");
        assert_one(&e, "monitors[0].port");
        assert!(e[0].contains("udp_icmp"), "the fix names udp_icmp: {e:?}");
    }

    #[test]
    fn udp_icmp_icmp_ping_and_smtp_have_no_method() {
        for ty in ["udp_icmp", "icmp_ping", "smtp"] {
            for method in ["GET", "connection_established"] {
                let e = monitor_errors(&format!("type = \"{ty}\"\nmethod = \"{method}\""));
                assert_one(&e, "monitors[0].method");
                assert!(e[0].contains(&format!("{ty} monitors")), "{e:?}");
            }
        }
    }

    /// Cloudflare documents these as "only valid for HTTP and HTTPS monitors"; they are
    /// refused on the other types, one error each, naming the field.
    #[test]
    fn http_fields_refused_on_udp_icmp_icmp_ping_and_smtp() {
        for ty in ["udp_icmp", "icmp_ping", "smtp"] {
            for (field, line) in [
                ("path", "path = \"/\""),
                ("header.Host", "header = { Host = [\"x\"] }"),
                ("expected_codes", "expected_codes = \"200\""),
                ("expected_body", "expected_body = \"ok\""),
                ("follow_redirects", "follow_redirects = true"),
                ("allow_insecure", "allow_insecure = true"),
            ] {
                let e = monitor_errors(&format!("type = \"{ty}\"\n{line}"));
                assert_one(&e, &format!("monitors[0].{field}"));
            }
        }
    }

    #[test]
    fn tcp_method_is_connection_established() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nmethod = \"GET\""),
            "monitors[0].method",
        );
    }

    #[test]
    fn http_method_get_or_head() {
        assert_one(&monitor_errors("method = \"POST\""), "monitors[0].method");
        let c = Config::parse(&with_monitor("method = \"HEAD\""), Path::new("t")).expect("valid");
        assert_eq!(c.monitors[0].method, HttpMethod::Head);
    }

    #[test]
    fn monitor_port_valid() {
        assert_one(&monitor_errors("port = 70000"), "monitors[0].port");
    }

    #[test]
    fn interval_not_below_minimum() {
        // A timeout of 0.05 s fits the limit; the interval below it is the one error.
        let e = monitor_errors("interval = 0.01\ntimeout = 0.05");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("monitors[0].interval"), "{e:#?}");
    }

    #[test]
    fn timeout_not_below_minimum() {
        assert_one(
            &monitor_errors("interval = 1\ntimeout = 0.001"),
            "monitors[0].timeout",
        );
    }

    #[test]
    fn timeout_not_longer_than_interval() {
        assert_one(
            &monitor_errors("interval = 2\ntimeout = 5"),
            "monitors[0].timeout",
        );
    }

    #[test]
    fn retries_at_most_five() {
        assert_one(&monitor_errors("retries = 6"), "monitors[0].retries");
    }

    #[test]
    fn consecutive_counts_bounded() {
        assert_one(
            &monitor_errors("consecutive_down = 1000"),
            "monitors[0].consecutive_down",
        );
    }

    #[test]
    fn expected_codes_pattern() {
        assert_one(
            &monitor_errors("expected_codes = \"2xxx\""),
            "monitors[0].expected_codes",
        );
        assert_one(
            &monitor_errors("expected_codes = \"x00\""),
            "monitors[0].expected_codes",
        );
    }

    #[test]
    fn expected_codes_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nexpected_codes = \"200\""),
            "monitors[0].expected_codes",
        );
    }

    #[test]
    fn expected_body_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nexpected_body = \"ok\""),
            "monitors[0].expected_body",
        );
    }

    #[test]
    fn allow_insecure_only_for_https() {
        assert_one(
            &monitor_errors("allow_insecure = true"),
            "monitors[0].allow_insecure",
        );
    }

    #[test]
    fn follow_redirects_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nfollow_redirects = true"),
            "monitors[0].follow_redirects",
        );
    }

    #[test]
    fn path_starts_with_slash() {
        assert_one(&monitor_errors("path = \"health\""), "monitors[0].path");
    }

    #[test]
    fn header_names_valid_and_host_allowed() {
        assert_one(
            &monitor_errors("header = { \"Bad Name\" = [\"x\"] }"),
            "monitors[0].header",
        );
        let c = Config::parse(
            &with_monitor("header = { Host = [\"example.com\"] }"),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(
            c.monitors[0].header,
            vec![("Host".to_owned(), "example.com".to_owned())]
        );
    }
}
