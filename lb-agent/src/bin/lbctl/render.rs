//! Rendering (pure): tables for the object lists, the `status` tree, pool health, and the
//! number formats they share (SI rates, RTTs, ages, weights).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use serde_json::Value;

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn f64_field(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
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

fn monitor_target(m: &Value) -> String {
    let ty = str_field(m, "type");
    let port = m
        .get("port")
        .and_then(Value::as_u64)
        .filter(|&p| p != 0)
        .map(|p| format!(":{p}"));
    if ty == "tcp" {
        port.unwrap_or_else(|| "origin port".to_owned())
    } else {
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
                if str_field(m, "type") == "tcp" {
                    "-".to_owned()
                } else {
                    cell(m, "expected_codes")
                },
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

/// The pools a load balancer may use, in order, with why: default pools, then pools only
/// named by region/country/PoP steering ("geo"), then the fallback pool.
fn lb_pool_roles(lb_config: &Value) -> Vec<(String, Vec<&'static str>)> {
    fn add(out: &mut Vec<(String, Vec<&'static str>)>, id: &str, role: &'static str) {
        if id.is_empty() {
            return;
        }
        match out.iter_mut().find(|(p, _)| p == id) {
            Some((_, roles)) if !roles.contains(&role) => roles.push(role),
            Some(_) => {}
            None => out.push((id.to_owned(), vec![role])),
        }
    }
    let mut out = Vec::new();
    for id in lb_config
        .get("default_pools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        add(&mut out, id, "default");
    }
    for key in ["region_pools", "country_pools", "pop_pools"] {
        // BTreeMap for a stable order whatever the server's key order.
        let map: BTreeMap<&String, &Value> = lb_config
            .get(key)
            .and_then(Value::as_object)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        for ids in map.values() {
            for id in ids
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !out.iter().any(|(p, _)| p == id) {
                    add(&mut out, id, "geo");
                }
            }
        }
    }
    add(&mut out, str_field(lb_config, "fallback_pool"), "fallback");
    out
}

const ORIGIN_HEADERS: [&str; 11] = [
    "ORIGIN", "ADDRESS", "STATE", "FOR", "RTT", "FLOWS", "PKT/S", "BYTES/S", "NEW/S", "WEIGHT",
    "REASON",
];

fn origin_row(o: &Value, updated: u64) -> Vec<String> {
    let mut state = match str_field(o, "state") {
        "" => "?".to_owned(),
        s => s.to_owned(),
    };
    if o.get("enabled").and_then(Value::as_bool) == Some(false) {
        state.push_str(",disabled");
    }
    let since = o
        .get("since")
        .and_then(Value::as_u64)
        .filter(|&s| s != 0)
        .map_or_else(|| "-".to_owned(), |s| fmt_age(updated.saturating_sub(s)));
    let addr = match o.get("port").and_then(Value::as_u64) {
        Some(p) if p != 0 => join_host_port(str_field(o, "address"), p),
        _ => cell(o, "address"),
    };
    vec![
        cell(o, "origin"),
        addr,
        state,
        since,
        fmt_rtt(f64_field(o, "rtt_ms")),
        o.get("open_flows")
            .and_then(Value::as_i64)
            .map_or_else(|| "-".to_owned(), |n| n.max(0).to_string()),
        fmt_si(f64_field(o, "packets_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(o, "bytes_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(o, "new_flows_per_sec").unwrap_or(0.0)),
        f64_field(o, "weight").map_or_else(|| "-".to_owned(), fmt_weight),
        str_field(o, "reason").to_owned(),
    ]
}

fn pool_line(pool: &Value, roles: &[&str], active: bool) -> String {
    let mut tags: Vec<&str> = roles.to_vec();
    if active {
        tags.push("active");
    }
    let health = match pool.get("healthy").and_then(Value::as_bool) {
        Some(true) => "healthy",
        Some(false) => "UNHEALTHY",
        None => "health unknown",
    };
    let mut s = format!(
        "{} pool {}",
        if active { "*" } else { " " },
        match str_field(pool, "name") {
            "" => str_field(pool, "id"),
            n => n,
        }
    );
    if !tags.is_empty() {
        let _ = write!(s, " [{}]", tags.join(", "));
    }
    let _ = write!(
        s,
        "  {health}  {}/{} origins healthy (min {})  rtt {}",
        cell(pool, "healthy_origins"),
        cell(pool, "enabled_origins"),
        cell(pool, "minimum_origins"),
        fmt_rtt(f64_field(pool, "rtt_ms"))
    );
    s
}

/// The `status` tree: each load balancer with its traffic, under it each pool it may use
/// (active marked `*`), under each pool its origins as an aligned table.
///
/// `lbs` and `pools` are the configured objects (`/client/v4` lists): the load balancers say
/// which pools belong to which load balancer, the pools name those missing from the live view.
/// `now` (unix seconds) dates the snapshot.
pub(crate) fn render_status(status: &Value, lbs: &[Value], pools: &[Value], now: u64) -> String {
    let empty = Vec::new();
    let arr = |k: &str| status.get(k).and_then(Value::as_array).unwrap_or(&empty);
    let st_lbs = arr("load_balancers");
    let live = Live {
        pools: arr("pools"),
        origins: arr("origins"),
    };
    let updated = status.get("updated").and_then(Value::as_u64).unwrap_or(now);

    let mut out = String::new();
    let _ = write!(
        out,
        "agent status, {} old",
        fmt_age(now.saturating_sub(updated))
    );
    if let Some(pop) = status.get("pop").and_then(Value::as_str) {
        let _ = write!(out, ", PoP {pop}");
    }
    out.push('\n');
    if st_lbs.is_empty() {
        out.push_str("no load balancers\n");
    }

    let mut shown: Vec<String> = Vec::new();
    let mut any_active = false;
    for lb in st_lbs {
        let active_id = live.active_pool_id(lb);
        lb_lines(&mut out, lb, active_id);
        let members = lb_members(lb, active_id, lbs);
        let groups: Vec<(String, Vec<&Value>)> = members
            .iter()
            .map(|(id, roles)| live.pool_group(id, roles, id == active_id, pools))
            .collect();
        any_active |= members.iter().any(|(id, _)| id == active_id);
        shown.extend(members.into_iter().map(|(id, _)| id));
        render_pool_groups(&mut out, &groups, updated);
    }

    let others: Vec<&Value> = live
        .pools
        .iter()
        .filter(|p| !shown.iter().any(|s| s == str_field(p, "id")))
        .collect();
    if !others.is_empty() {
        out.push_str("\npools used by no load balancer\n");
        let groups: Vec<(String, Vec<&Value>)> = others
            .iter()
            .map(|p| (pool_line(p, &[], false), live.origins_of(p)))
            .collect();
        render_pool_groups(&mut out, &groups, updated);
    }
    if any_active {
        out.push_str("\n(* = active pool)\n");
    }
    out
}

/// The live view's pools and origins.
struct Live<'a> {
    pools: &'a [Value],
    origins: &'a [Value],
}

impl<'a> Live<'a> {
    /// The active pool of a live load balancer, "" if none. The live view names it by id
    /// and by name; older agents by name only.
    fn active_pool_id(&self, lb: &'a Value) -> &'a str {
        match str_field(lb, "active_pool_id") {
            "" => self
                .pools
                .iter()
                .find(|p| {
                    let n = str_field(lb, "active_pool");
                    !n.is_empty() && str_field(p, "name") == n
                })
                .map_or("", |p| str_field(p, "id")),
            id => id,
        }
    }

    fn origins_of(&self, pool: &Value) -> Vec<&'a Value> {
        let (id, name) = (str_field(pool, "id"), str_field(pool, "name"));
        self.origins
            .iter()
            .filter(|o| match str_field(o, "pool_id") {
                "" => str_field(o, "pool") == name,
                pid => pid == id,
            })
            .collect()
    }

    /// A pool's line and its origins; a pool missing from the live view is named from the
    /// configured `pools`.
    fn pool_group(
        &self,
        id: &str,
        roles: &[&str],
        active: bool,
        pools: &[Value],
    ) -> (String, Vec<&'a Value>) {
        if let Some(p) = self.pools.iter().find(|p| str_field(p, "id") == id) {
            return (pool_line(p, roles, active), self.origins_of(p));
        }
        let name = pools
            .iter()
            .find(|p| str_field(p, "id") == id)
            .map(|p| str_field(p, "name"))
            .filter(|n| !n.is_empty())
            .unwrap_or(id);
        let mut tags = roles.to_vec();
        if active {
            tags.push("active");
        }
        let line = format!(
            "{} pool {name} [{}]  not in the agent's live view",
            if active { "*" } else { " " },
            tags.join(", ")
        );
        (line, Vec::new())
    }
}

/// A load balancer's two lines: name, VIP, steering and flags, then its traffic.
fn lb_lines(out: &mut String, lb: &Value, active_id: &str) {
    let _ = write!(
        out,
        "\nload balancer {}  vip {}  steering {}",
        match str_field(lb, "name") {
            "" => str_field(lb, "id"),
            n => n,
        },
        cell(lb, "vip"),
        cell(lb, "steering_policy"),
    );
    if lb.get("enabled").and_then(Value::as_bool) == Some(false) {
        out.push_str("  DISABLED");
    }
    if lb.get("fallback").and_then(Value::as_bool) == Some(true) {
        out.push_str("  FALLBACK: no default pool is healthy");
    }
    if active_id.is_empty() {
        out.push_str("  NO ACTIVE POOL");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  {} pkt/s  {} B/s  {} new flows/s  (totals: {} packets, {} bytes, {} flows)",
        fmt_si(f64_field(lb, "packets_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(lb, "bytes_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(lb, "new_flows_per_sec").unwrap_or(0.0)),
        fmt_count(lb.get("packets").and_then(Value::as_u64).unwrap_or(0)),
        fmt_count(lb.get("bytes").and_then(Value::as_u64).unwrap_or(0)),
        fmt_count(lb.get("new_flows").and_then(Value::as_u64).unwrap_or(0)),
    );
}

/// The pools of a live load balancer with their roles, from its configured object; the
/// configured list may lag the live view, so the active pool is never hidden.
fn lb_members(lb: &Value, active_id: &str, lbs: &[Value]) -> Vec<(String, Vec<&'static str>)> {
    let lb_id = str_field(lb, "id");
    let mut members = lbs
        .iter()
        .find(|c| str_field(c, "id") == lb_id)
        .map(lb_pool_roles)
        .unwrap_or_default();
    if !active_id.is_empty() && !members.iter().any(|(p, _)| p == active_id) {
        members.push((active_id.to_owned(), Vec::new()));
    }
    members
}

/// Writes each pool line at indent 2 and its origins below at indent 6, with the origin
/// columns aligned across all the pools of the group.
fn render_pool_groups(out: &mut String, groups: &[(String, Vec<&Value>)], updated: u64) {
    let rows: Vec<Vec<Vec<String>>> = groups
        .iter()
        .map(|(_, origins)| origins.iter().map(|o| origin_row(o, updated)).collect())
        .collect();
    // One table for the whole group, split back per pool.
    let all: Vec<Vec<String>> = rows.iter().flatten().cloned().collect();
    let table = render_table(&ORIGIN_HEADERS, &all, 6);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    for ((line, _), pool_rows) in groups.iter().zip(&rows) {
        let _ = writeln!(out, "  {line}");
        if pool_rows.is_empty() {
            out.push_str("      (no origins)\n");
            continue;
        }
        let _ = writeln!(out, "{header}");
        for _ in pool_rows {
            let _ = writeln!(out, "{}", lines.next().unwrap_or(""));
        }
    }
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
    use crate::fixtures::{lbs_config, pools_config, status, LB1, LB2, SORRY, WEB_A, WEB_B};

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
            "ID                                NAME  VIP            ENABLED  STEERING  DEFAULT POOLS  FALLBACK  AFFINITY  DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            format!(
                "{LB1}  www   10.0.0.10:80   yes      off       web-a,web-b    sorry     ip 300s"
            )
        );
        assert_eq!(
            lines[2],
            format!("{LB2}  api   10.0.0.11:443  yes      geo       web-b          sorry     none")
        );
        assert_eq!(render_lbs(&[], &HashMap::new()), "no load balancers\n");
        assert_eq!(join_host_port("2001:db8::1", 80), "[2001:db8::1]:80");
    }

    #[test]
    fn pools_of_a_load_balancer_in_order_with_roles() {
        let lbs = lbs_config();
        assert_eq!(
            lb_pool_roles(&lbs[0]),
            [
                (WEB_A.to_owned(), vec!["default"]),
                (WEB_B.to_owned(), vec!["default"]),
                (SORRY.to_owned(), vec!["fallback"])
            ]
        );
        let same = json!({"default_pools": [WEB_A], "fallback_pool": WEB_A,
                          "country_pools": {"NL": [WEB_A, WEB_B]}});
        assert_eq!(
            lb_pool_roles(&same),
            [
                (WEB_A.to_owned(), vec!["default", "fallback"]),
                (WEB_B.to_owned(), vec!["geo"])
            ]
        );
    }

    #[test]
    fn status_tree_layout() {
        let out = render_status(&status(), &lbs_config(), &pools_config(), 1_000_002);
        let want = "\
agent status, 2s old, PoP AMS

load balancer www  vip 10.0.0.10:80  steering off
  1.2k pkt/s  3.4M B/s  12 new flows/s  (totals: 1.2M packets, 3.4G bytes, 45k flows)
  * pool web-a [default, active]  healthy  1/1 origins healthy (min 1)  rtt 0.80 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      a1      10.0.1.1:80    up                5m   0.42 ms  37     1.2k   3.4M     12     1       connect ok
      a2      10.0.1.2:8080  unknown,disabled  -    -        0      0      0        0      0.5
    pool web-b [default]  UNHEALTHY  0/1 origins healthy (min 1)  rtt -
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      b1      10.0.2.1:443   down              10s  -        0      0      0        0      1       connection refused
    pool sorry [fallback]  healthy  1/1 origins healthy (min 1)  rtt 12 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      s1      10.0.9.1:80    up                1d   12 ms    2      0.4    150      0.1    1       connect ok

load balancer api  vip 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy
  0 pkt/s  0 B/s  0 new flows/s  (totals: 0 packets, 0 bytes, 0 flows)
    pool web-b [default]  UNHEALTHY  0/1 origins healthy (min 1)  rtt -
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      b1      10.0.2.1:443   down              10s  -        0      0      0        0      1       connection refused
    pool web-a [geo]  healthy  1/1 origins healthy (min 1)  rtt 0.80 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      a1      10.0.1.1:80    up                5m   0.42 ms  37     1.2k   3.4M     12     1       connect ok
      a2      10.0.1.2:8080  unknown,disabled  -    -        0      0      0        0      0.5
  * pool sorry [fallback, active]  healthy  1/1 origins healthy (min 1)  rtt 12 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      s1      10.0.9.1:80    up                1d   12 ms    2      0.4    150      0.1    1       connect ok

pools used by no load balancer
    pool spare  healthy  0/0 origins healthy (min 0)  rtt -
      (no origins)

(* = active pool)
";
        assert_eq!(out, want, "got:\n{out}");
    }

    #[test]
    fn status_keeps_active_pool_missing_from_config_and_flags_none() {
        let mut st = status();
        st["load_balancers"][1]["active_pool_id"] = Value::Null;
        st["load_balancers"][1]["active_pool"] = Value::Null;
        // Config lists only www, and www's config no longer names web-a.
        let mut lbs = lbs_config();
        lbs.truncate(1);
        lbs[0]["default_pools"] = json!([WEB_B]);
        let out = render_status(&st, &lbs, &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [active]  healthy"), "{out}");
        assert!(
            out.contains("load balancer api  vip 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy  NO ACTIVE POOL\n"),
            "{out}"
        );
        // The active pool found by name when the id is absent (older agent).
        let mut st = status();
        st["load_balancers"][0]
            .as_object_mut()
            .expect("lb")
            .remove("active_pool_id");
        let out = render_status(&st, &lbs_config(), &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [default, active]"), "{out}");

        let empty = render_status(
            &json!({"updated": 5, "pop": null, "load_balancers": [], "pools": [], "origins": []}),
            &[],
            &[],
            5,
        );
        assert_eq!(empty, "agent status, 0s old\nno load balancers\n");
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
