//! The `status` tree: each load balancer with its traffic, the pools it may use (the active
//! one marked), each pool's origins in a table aligned across the load balancer's pools.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use lb_agent::status::{LbStatus, OriginStatus, PoolStatus, Status};

use super::{
    fmt_age, fmt_count, fmt_rtt, fmt_si, fmt_weight, join_host_port, render_table, str_field,
};

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

fn origin_row(o: &OriginStatus, updated: u64) -> Vec<String> {
    let mut state = o.state.to_string();
    if !o.enabled {
        state.push_str(",disabled");
    }
    let since = o
        .since
        .filter(|&s| s != 0)
        .map_or_else(|| "-".to_owned(), |s| fmt_age(updated.saturating_sub(s)));
    let addr = match o.port {
        0 => o.address.clone(),
        p => join_host_port(&o.address, u64::from(p)),
    };
    let t = o.traffic.unwrap_or_default();
    vec![
        o.origin.clone(),
        addr,
        state,
        since,
        fmt_rtt(o.rtt_ms),
        o.traffic
            .map_or_else(|| "-".to_owned(), |t| t.open_flows.max(0).to_string()),
        fmt_si(t.packets_per_sec),
        fmt_si(t.bytes_per_sec),
        fmt_si(t.new_flows_per_sec),
        fmt_weight(o.weight),
        o.reason.clone(),
    ]
}

fn pool_line(pool: &PoolStatus, roles: &[&str], active: bool) -> String {
    let mut tags: Vec<&str> = roles.to_vec();
    if active {
        tags.push("active");
    }
    let health = if pool.healthy { "healthy" } else { "UNHEALTHY" };
    let mut s = format!(
        "{} pool {}",
        if active { "*" } else { " " },
        match pool.name.as_str() {
            "" => pool.id.as_deref().unwrap_or(""),
            n => n,
        }
    );
    if !tags.is_empty() {
        let _ = write!(s, " [{}]", tags.join(", "));
    }
    let _ = write!(
        s,
        "  {health}  {}/{} origins healthy (min {})  rtt {}",
        pool.healthy_origins,
        pool.enabled_origins,
        pool.minimum_origins,
        fmt_rtt(pool.rtt_ms)
    );
    s
}

/// The `status` tree: each load balancer with its traffic, under it each pool it may use
/// (active marked `*`), under each pool its origins as an aligned table.
///
/// `lbs` and `pools` are the configured objects (`/client/v4` lists): the load balancers say
/// which pools belong to which load balancer, the pools name those missing from the live view.
/// `now` (unix seconds) dates the snapshot.
pub(crate) fn render_status(status: &Status, lbs: &[Value], pools: &[Value], now: u64) -> String {
    let live = Live {
        pools: &status.pools,
        origins: &status.origins,
    };
    let updated = match status.updated {
        0 => now,
        u => u,
    };

    let mut out = String::new();
    let _ = write!(
        out,
        "agent status, {} old",
        fmt_age(now.saturating_sub(updated))
    );
    if let Some(pop) = &status.pop {
        let _ = write!(out, ", PoP {pop}");
    }
    out.push('\n');
    if status.load_balancers.is_empty() {
        out.push_str("no load balancers\n");
    }

    let mut shown: Vec<String> = Vec::new();
    let mut any_active = false;
    for lb in &status.load_balancers {
        let active_id = live.active_pool_id(lb);
        lb_lines(&mut out, lb, active_id);
        let members = lb_members(lb, active_id, lbs);
        let groups: Vec<(String, Vec<&OriginStatus>)> = members
            .iter()
            .map(|(id, roles)| live.pool_group(id, roles, id == active_id, pools))
            .collect();
        any_active |= members.iter().any(|(id, _)| id == active_id);
        shown.extend(members.into_iter().map(|(id, _)| id));
        render_pool_groups(&mut out, &groups, updated);
    }

    let others: Vec<&PoolStatus> = live
        .pools
        .iter()
        .filter(|p| !shown.iter().any(|s| Some(s.as_str()) == p.id.as_deref()))
        .collect();
    if !others.is_empty() {
        out.push_str("\npools used by no load balancer\n");
        let groups: Vec<(String, Vec<&OriginStatus>)> = others
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
    pools: &'a [PoolStatus],
    origins: &'a [OriginStatus],
}

impl<'a> Live<'a> {
    /// The active pool of a live load balancer, "" if none. The live view names it by id
    /// and by name; older agents by name only.
    fn active_pool_id(&self, lb: &'a LbStatus) -> &'a str {
        match lb.active_pool_id.as_deref() {
            None | Some("") => self
                .pools
                .iter()
                .find(|p| {
                    lb.active_pool
                        .as_deref()
                        .is_some_and(|n| !n.is_empty() && p.name == n)
                })
                .and_then(|p| p.id.as_deref())
                .unwrap_or(""),
            Some(id) => id,
        }
    }

    fn origins_of(&self, pool: &PoolStatus) -> Vec<&'a OriginStatus> {
        self.origins
            .iter()
            .filter(|o| match o.pool_id.as_deref() {
                None | Some("") => o.pool == pool.name,
                pid => pid == pool.id.as_deref(),
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
    ) -> (String, Vec<&'a OriginStatus>) {
        if let Some(p) = self.pools.iter().find(|p| p.id.as_deref() == Some(id)) {
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
fn lb_lines(out: &mut String, lb: &LbStatus, active_id: &str) {
    let _ = write!(
        out,
        "\nload balancer {}  vip {} {}  steering {}",
        match lb.name.as_str() {
            "" => lb.id.as_deref().unwrap_or(""),
            n => n,
        },
        lb.protocol,
        lb.vip,
        lb.steering_policy,
    );
    if !lb.enabled {
        out.push_str("  DISABLED");
    }
    if lb.fallback {
        out.push_str("  FALLBACK: no default pool is healthy");
    }
    if active_id.is_empty() {
        out.push_str("  NO ACTIVE POOL");
    }
    out.push('\n');
    let t = lb.traffic.unwrap_or_default();
    let _ = writeln!(
        out,
        "  {} pkt/s  {} B/s  {} new flows/s  (totals: {} packets, {} bytes, {} flows)",
        fmt_si(t.packets_per_sec),
        fmt_si(t.bytes_per_sec),
        fmt_si(t.new_flows_per_sec),
        fmt_count(t.packets),
        fmt_count(t.bytes),
        fmt_count(t.new_flows),
    );
}

/// The pools of a live load balancer with their roles, from its configured object; the
/// configured list may lag the live view, so the active pool is never hidden.
fn lb_members(lb: &LbStatus, active_id: &str, lbs: &[Value]) -> Vec<(String, Vec<&'static str>)> {
    let lb_id = lb.id.as_deref().unwrap_or("");
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
fn render_pool_groups(out: &mut String, groups: &[(String, Vec<&OriginStatus>)], updated: u64) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{lbs_config, pools_config, status, status_value, SORRY, WEB_A, WEB_B};

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

load balancer www  vip tcp 10.0.0.10:80  steering off
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

load balancer api  vip udp 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy
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
        st.load_balancers[1].active_pool_id = None;
        st.load_balancers[1].active_pool = None;
        // Config lists only www, and www's config no longer names web-a.
        let mut lbs = lbs_config();
        lbs.truncate(1);
        lbs[0]["default_pools"] = json!([WEB_B]);
        let out = render_status(&st, &lbs, &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [active]  healthy"), "{out}");
        assert!(
            out.contains("load balancer api  vip udp 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy  NO ACTIVE POOL\n"),
            "{out}"
        );
        // The active pool found by name when the id is absent (older agent).
        let mut st = status_value();
        st["load_balancers"][0]
            .as_object_mut()
            .expect("lb")
            .remove("active_pool_id");
        let st: Status = serde_json::from_value(st).expect("an older agent's status");
        let out = render_status(&st, &lbs_config(), &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [default, active]"), "{out}");

        let empty: Status = serde_json::from_value(
            json!({"updated": 5, "pop": null, "load_balancers": [], "pools": [], "origins": []}),
        )
        .expect("empty status");
        let empty = render_status(&empty, &[], &[], 5);
        assert_eq!(empty, "agent status, 0s old\nno load balancers\n");
    }
}
