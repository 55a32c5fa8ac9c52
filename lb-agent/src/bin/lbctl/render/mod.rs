//! Rendering (pure): tables for the object lists, pool health, and the number formats
//! they share (SI rates, RTTs, ages, weights); the `status` tree is in `status`.

mod status;

pub(crate) use status::render_status;

use std::{collections::HashMap, fmt::Write as _};

use serde_json::Value;

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A scalar for a table cell: strings as is, numbers and bools printed, absent as "-".
fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Scales with k/M/G/T: 0 -> "0", 0.5 -> "0.5", 999 -> "999", 1234 -> "1.2k",
/// 45678 -> "46k", 3.4e6 -> "3.4M". Negative or non-finite values (a counter reset) print "0".
fn fmt_si(v: f64) -> String {
    const UNITS: [(&str, f64); 5] = [("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)];
    if !v.is_finite() || v <= 0.0 {
        return "0".to_owned();
    }
    let mut i = UNITS.iter().rposition(|&(_, u)| v >= u).unwrap_or(0);
    loop {
        let (suffix, unit) = UNITS[i];
        let scaled = v / unit;
        let s = if scaled < 9.95 {
            let s = format!("{scaled:.1}");
            s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
        } else {
            format!("{scaled:.0}")
        };
        // 999_999 rounds to "1000k": show it as "1M" instead.
        if s == "1000" && i + 1 < UNITS.len() {
            i += 1;
            continue;
        }
        return format!("{s}{suffix}");
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn fmt_count(v: u64) -> String {
    fmt_si(v as f64)
}

/// RTT in milliseconds: "0.42 ms", "3.1 ms", "120 ms"; "-" when unknown.
fn fmt_rtt(ms: Option<f64>) -> String {
    match ms {
        Some(m) if m.is_finite() && m >= 0.0 => {
            if m < 1.0 {
                format!("{m:.2} ms")
            } else if m < 9.95 {
                format!("{m:.1} ms")
            } else {
                format!("{m:.0} ms")
            }
        }
        _ => "-".to_owned(),
    }
}

/// A duration in seconds as "42s", "5m", "3h", "2d".
fn fmt_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Aligns columns with two spaces between them; the last column is not padded.
fn render_table(headers: &[&str], rows: &[Vec<String>], indent: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = " ".repeat(indent);
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn name_or_dash(v: &Value) -> String {
    cell(v, "name")
}

/// What a monitor checks, by type: the port (or "origin port") for tcp, udp and smtp, the
/// request for http(s), "echo" for icmp_ping.
fn monitor_target(m: &Value) -> String {
    let ty = str_field(m, "type");
    let port = m
        .get("port")
        .and_then(Value::as_u64)
        .filter(|&p| p != 0)
        .map(|p| format!(":{p}"));
    let port_or_origin = || port.clone().unwrap_or_else(|| "origin port".to_owned());
    match ty {
        "tcp" | "smtp" => port_or_origin(),
        "udp_icmp" => format!("udp {}, echo", port_or_origin()),
        "icmp_ping" => "echo".to_owned(),
        _ => {
            let method = match str_field(m, "method") {
                "" => "GET",
                x => x,
            };
            let path = match str_field(m, "path") {
                "" => "/",
                x => x,
            };
            format!(
                "{method} {path}{}",
                port.map(|p| format!(" {p}")).unwrap_or_default()
            )
        }
    }
}

/// What a monitor counts as healthy, by type.
fn monitor_expect(m: &Value) -> String {
    match str_field(m, "type") {
        "tcp" => "-".to_owned(),
        "smtp" => "220, 221".to_owned(),
        "udp_icmp" => "echo reply, no unreachable".to_owned(),
        "icmp_ping" => "echo reply".to_owned(),
        _ => cell(m, "expected_codes"),
    }
}

pub(crate) fn render_monitors(items: &[Value]) -> String {
    if items.is_empty() {
        return "no monitors\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            vec![
                cell(m, "id"),
                name_or_dash(m),
                cell(m, "type"),
                monitor_target(m),
                cell(m, "interval"),
                cell(m, "timeout"),
                cell(m, "retries"),
                monitor_expect(m),
                str_field(m, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "TYPE",
            "TARGET",
            "INTERVAL",
            "TIMEOUT",
            "RETRIES",
            "EXPECT",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

pub(crate) fn render_pools(items: &[Value], monitor_names: &HashMap<String, String>) -> String {
    if items.is_empty() {
        return "no pools\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let origins = p.get("origins").and_then(Value::as_array);
            let total = origins.map_or(0, Vec::len);
            let enabled = origins.map_or(0, |o| {
                o.iter()
                    .filter(|o| o.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                    .count()
            });
            let monitor = match str_field(p, "monitor") {
                "" => "-".to_owned(),
                id => monitor_names
                    .get(id)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| id.to_owned()),
            };
            let steering = p
                .get("origin_steering")
                .map(|s| cell(s, "policy"))
                .unwrap_or_else(|| "-".to_owned());
            vec![
                cell(p, "id"),
                name_or_dash(p),
                yes_no(p.get("enabled").and_then(Value::as_bool).unwrap_or(true)),
                format!("{enabled}/{total}"),
                cell(p, "minimum_origins"),
                monitor,
                steering,
                str_field(p, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "ENABLED",
            "ORIGINS",
            "MIN",
            "MONITOR",
            "STEERING",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn pool_ref(id: &str, pool_names: &HashMap<String, String>) -> String {
    pool_names
        .get(id)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

pub(crate) fn render_lbs(items: &[Value], pool_names: &HashMap<String, String>) -> String {
    if items.is_empty() {
        return "no load balancers\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|lb| {
            let vip = match (
                str_field(lb, "address"),
                lb.get("port").and_then(Value::as_u64),
            ) {
                ("", _) => "-".to_owned(),
                (a, Some(p)) => join_host_port(a, p),
                (a, None) => a.to_owned(),
            };
            // The protocol with the VIP ("udp 10.0.0.10:53"); an older agent has none: tcp.
            let vip = match str_field(lb, "protocol") {
                "" => format!("tcp {vip}"),
                p => format!("{p} {vip}"),
            };
            let defaults = lb
                .get("default_pools")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|id| pool_ref(id, pool_names))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".to_owned());
            let fallback = match str_field(lb, "fallback_pool") {
                "" => "-".to_owned(),
                id => pool_ref(id, pool_names),
            };
            let affinity = match str_field(lb, "session_affinity") {
                "" | "none" => "none".to_owned(),
                a => match lb.get("session_affinity_ttl").and_then(Value::as_u64) {
                    Some(ttl) => format!("{a} {ttl}s"),
                    None => a.to_owned(),
                },
            };
            vec![
                cell(lb, "id"),
                name_or_dash(lb),
                vip,
                yes_no(lb.get("enabled").and_then(Value::as_bool).unwrap_or(true)),
                cell(lb, "steering_policy"),
                defaults,
                fallback,
                affinity,
                str_field(lb, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "VIP",
            "ENABLED",
            "STEERING",
            "DEFAULT POOLS",
            "FALLBACK",
            "AFFINITY",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

pub(crate) fn id_name_map(items: &[Value]) -> HashMap<String, String> {
    items
        .iter()
        .map(|o| {
            (
                str_field(o, "id").to_owned(),
                str_field(o, "name").to_owned(),
            )
        })
        .collect()
}

/// `pools health`: per PoP (the Cloudflare shape `pop_health`), each origin's health.
/// Anything else is printed as JSON.
pub(crate) fn render_pool_health(h: &Value) -> String {
    let Some(pops) = h.get("pop_health").and_then(Value::as_object) else {
        return serde_json::to_string_pretty(h).unwrap_or_default() + "\n";
    };
    let mut out = String::new();
    let _ = writeln!(out, "pool {}", cell(h, "pool_id"));
    for (pop, ph) in pops {
        let healthy = match ph.get("healthy").and_then(Value::as_bool) {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None => "health unknown",
        };
        let _ = writeln!(out, "  {pop}: {healthy}");
        let mut rows = Vec::new();
        for entry in ph
            .get("origins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Each entry is {"<address>": {healthy, rtt, failure_reason, response_code}}.
            for (addr, o) in entry.as_object().into_iter().flatten() {
                let rtt = match o.get("rtt") {
                    Some(Value::Number(n)) => fmt_rtt(n.as_f64()),
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => "-".to_owned(),
                };
                rows.push(vec![
                    addr.clone(),
                    match o.get("healthy").and_then(Value::as_bool) {
                        Some(b) => yes_no(b),
                        None => "-".to_owned(),
                    },
                    rtt,
                    cell(o, "response_code"),
                    str_field(o, "failure_reason").to_owned(),
                ]);
            }
        }
        if rows.is_empty() {
            out.push_str("    (no origins)\n");
        } else {
            out.push_str(&render_table(
                &["ORIGIN", "HEALTHY", "RTT", "CODE", "REASON"],
                &rows,
                4,
            ));
        }
    }
    out
}

pub(crate) fn join_host_port(addr: &str, port: u64) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn fmt_weight(w: f64) -> String {
    let s = format!("{w:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{lbs_config, pools_config, LB1, LB2, WEB_A, WEB_B};

    #[test]
    fn si_rates_use_k_m_g_and_drop_trailing_zero() {
        let cases = [
            (0.0, "0"),
            (0.5, "0.5"),
            (3.0, "3"),
            (12.4, "12"),
            (999.0, "999"),
            (999.6, "1k"),
            (1234.0, "1.2k"),
            (45_678.0, "46k"),
            (999_999.0, "1M"),
            (3_400_000.0, "3.4M"),
            (2.5e9, "2.5G"),
            (-3.0, "0"),
            (f64::NAN, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt_si(v), want, "fmt_si({v})");
        }
        assert_eq!(fmt_count(3_400_000_000), "3.4G");
    }

    #[test]
    fn rtt_in_milliseconds_and_ages() {
        assert_eq!(fmt_rtt(None), "-");
        assert_eq!(fmt_rtt(Some(0.42)), "0.42 ms");
        assert_eq!(fmt_rtt(Some(3.06)), "3.1 ms");
        assert_eq!(fmt_rtt(Some(120.4)), "120 ms");
        assert_eq!(fmt_rtt(Some(f64::INFINITY)), "-");
        assert_eq!(fmt_age(42), "42s");
        assert_eq!(fmt_age(300), "5m");
        assert_eq!(fmt_age(7200), "2h");
        assert_eq!(fmt_age(200_000), "2d");
    }

    #[test]
    fn weights_are_short() {
        assert_eq!(fmt_weight(1.0), "1");
        assert_eq!(fmt_weight(0.5), "0.5");
        assert_eq!(fmt_weight(1.0 / 3.0), "0.333");
        assert_eq!(fmt_weight(0.0), "0");
    }

    #[test]
    fn list_tables() {
        let monitors = [
            json!({"id": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "http-health", "type": "http",
                   "method": "GET", "path": "/health", "port": 8080, "interval": 5, "timeout": 2,
                   "retries": 1, "expected_codes": "2xx", "description": "app health"}),
            json!({"id": "ffffffffffffffffffffffffffffffff", "type": "tcp", "port": 2048,
                   "interval": 60, "timeout": 5, "retries": 2, "description": ""}),
        ];
        assert_eq!(
            render_monitors(&monitors),
            "\
ID                                NAME         TYPE  TARGET             INTERVAL  TIMEOUT  RETRIES  EXPECT  DESCRIPTION
eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee  http-health  http  GET /health :8080  5         2        1        2xx     app health
ffffffffffffffffffffffffffffffff  -            tcp   :2048              60        5        2        -
"
        );
        let others = [
            json!({"id": "a", "name": "dns", "type": "udp_icmp", "port": 53, "interval": 60,
                   "timeout": 5, "retries": 2}),
            json!({"id": "b", "name": "ping", "type": "icmp_ping", "interval": 60, "timeout": 5,
                   "retries": 2}),
            json!({"id": "c", "name": "mail", "type": "smtp", "interval": 60, "timeout": 5,
                   "retries": 2}),
        ];
        assert_eq!(
            render_monitors(&others),
            "\
ID  NAME  TYPE       TARGET         INTERVAL  TIMEOUT  RETRIES  EXPECT                      DESCRIPTION
a   dns   udp_icmp   udp :53, echo  60        5        2        echo reply, no unreachable
b   ping  icmp_ping  echo           60        5        2        echo reply
c   mail  smtp       origin port    60        5        2        220, 221
"
        );

        let monitor_names = id_name_map(&monitors);
        let pools = render_pools(&pools_config(), &monitor_names);
        let lines: Vec<&str> = pools.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                NAME   ENABLED  ORIGINS  MIN  MONITOR      STEERING  DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            format!("{WEB_A}  web-a  yes      1/2      1    http-health  hash")
        );
        assert_eq!(
            lines[2],
            format!("{WEB_B}  web-b  yes      1/1      1    -            -")
        );

        let lbs = render_lbs(&lbs_config(), &id_name_map(&pools_config()));
        let lines: Vec<&str> = lbs.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                NAME  VIP                ENABLED  STEERING  DEFAULT POOLS  FALLBACK  AFFINITY  DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            format!(
                "{LB1}  www   tcp 10.0.0.10:80   yes      off       web-a,web-b    sorry     ip 300s"
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "{LB2}  api   udp 10.0.0.11:443  yes      geo       web-b          sorry     none"
            )
        );
        assert_eq!(render_lbs(&[], &HashMap::new()), "no load balancers\n");
        assert_eq!(join_host_port("2001:db8::1", 80), "[2001:db8::1]:80");
    }

    #[test]
    fn pool_health_per_pop() {
        let h = json!({"pool_id": WEB_A, "pop_health": {"AMS": {"healthy": true, "origins": [
            {"10.0.1.1": {"healthy": true, "rtt": "0.4ms", "failure_reason": "No failures", "response_code": 200}},
            {"10.0.1.2": {"healthy": false, "rtt": 12.5, "failure_reason": "connection refused"}}
        ]}}});
        assert_eq!(
            render_pool_health(&h),
            format!(
                "\
pool {WEB_A}
  AMS: healthy
    ORIGIN    HEALTHY  RTT    CODE  REASON
    10.0.1.1  yes      0.4ms  200   No failures
    10.0.1.2  no       12 ms  -     connection refused
"
            )
        );
        // An unknown shape is shown as JSON rather than dropped.
        assert_eq!(render_pool_health(&json!({"x": 1})), "{\n  \"x\": 1\n}\n");
    }
}
