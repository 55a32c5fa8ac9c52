//! Reads the data path's counters from the pinned maps and names them from the config.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    config::Config,
    dataplane::{DataplaneError, Maps},
    health::HealthTable,
    plan::{self, Plan},
    reconcile::{self, Assignment, Current},
};

#[derive(Debug, Serialize)]
pub struct Stats {
    pub vips: Vec<VipStats>,
    pub events: std::collections::BTreeMap<String, u64>,
    pub syn_flood: SynFlood,
    pub udp_budget: UdpBudget,
    /// Flows by protocol and state (`lb-agent stats` only: walking the table is not for
    /// every second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowStates>,
}

/// The flows the tables hold, by protocol and state, from `REV_FLOWS` (one entry per flow,
/// with its state bits). A flow idle past its state's timeout is dead but stays in the
/// tables until its tuple or SNAT port is met again: it counts as expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowStates {
    /// TCP: handshake not finished (SYN seen, not established).
    pub tcp_handshake: u64,
    pub tcp_established: u64,
    /// TCP: a FIN from one side only.
    pub tcp_half_closed: u64,
    /// TCP: FINs from both sides, or a RST (kept to hold the SNAT port).
    pub tcp_closed: u64,
    pub tcp_expired: u64,
    /// UDP: the origin has answered, the client has not spoken since (a one-shot exchange so
    /// far: `udp_unreplied_timeout` applies).
    pub udp_answered: u64,
    /// UDP: answered, and the client spoke again after the answer (`udp_timeout` applies).
    pub udp_conversation: u64,
    /// UDP: the origin has not answered (yet, or ever: one-way traffic, spoofed sources).
    pub udp_unanswered: u64,
    pub udp_expired: u64,
}

impl FlowStates {
    /// Counts flow `r` as of coarse monotonic second `now` under `settings`' timeouts.
    pub fn add(&mut self, r: &lb_common::RevFlow, settings: &lb_common::Settings, now: u32) {
        use lb_common::{
            RevFlow, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_ORIGIN, CT_UDP, CT_UDP_STREAM,
        };
        let f = r.flags;
        let expired = now.wrapping_sub(r.last_seen) > RevFlow::timeout(f, settings);
        let n = if f & CT_UDP != 0 {
            if expired {
                &mut self.udp_expired
            } else if f & CT_UDP_STREAM != 0 {
                &mut self.udp_conversation
            } else if f & CT_ESTABLISHED != 0 {
                &mut self.udp_answered
            } else {
                &mut self.udp_unanswered
            }
        } else if expired {
            &mut self.tcp_expired
        } else if RevFlow::closed(f) {
            &mut self.tcp_closed
        } else if f & (CT_FIN_CLIENT | CT_FIN_ORIGIN) != 0 {
            &mut self.tcp_half_closed
        } else if f & CT_ESTABLISHED != 0 {
            &mut self.tcp_established
        } else {
            &mut self.tcp_handshake
        };
        *n += 1;
    }

    /// (protocol, state, flows) for each state, TCP's first.
    pub fn rows(&self) -> [(&'static str, &'static str, u64); 9] {
        [
            ("tcp", "handshake", self.tcp_handshake),
            ("tcp", "established", self.tcp_established),
            ("tcp", "half_closed", self.tcp_half_closed),
            ("tcp", "closed", self.tcp_closed),
            ("tcp", "expired", self.tcp_expired),
            ("udp", "conversation", self.udp_conversation),
            ("udp", "answered", self.udp_answered),
            ("udp", "unanswered", self.udp_unanswered),
            ("udp", "expired", self.udp_expired),
        ]
    }

    /// Walks `REV_FLOWS` (at most `limit` entries) with the data path's settings.
    pub fn read(maps: &Maps, limit: usize) -> Result<Self, DataplaneError> {
        let settings = maps
            .settings
            .get(&0, 0)
            .map_err(crate::dataplane::map_err("SETTINGS"))?;
        let now = coarse_now();
        let mut out = Self::default();
        for (_, r) in maps.rev_flows.iter().take(limit).flatten() {
            out.add(&r, &settings, now);
        }
        Ok(out)
    }
}

/// The SYN-flood defence as the data path sees it (`HANDSHAKES`, `SETTINGS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SynFlood {
    /// Handshakes started and not finished over the SYN timeout.
    pub handshakes_in_flight: u64,
    /// In flight at which SYNs get cookies (`None`: cookies off; 0: always).
    pub syn_budget: Option<u32>,
    /// A SYN cookie was sent within the last two seconds.
    pub cookies_active: bool,
}

impl SynFlood {
    /// Reads `h` at coarse monotonic second `now`, as the data path would.
    pub fn from_maps(h: &lb_common::Handshakes, settings: &lb_common::Settings, now: u32) -> Self {
        let window = settings.syn_secs + 1;
        let (started, done) = h
            .buckets
            .iter()
            .filter(|b| now.wrapping_sub(b.sec) < window)
            .fold((0u64, 0u64), |(s, d), b| (s + b.started, d + b.done));
        Self {
            handshakes_in_flight: started.saturating_sub(done),
            syn_budget: (settings.syn_budget != u32::MAX).then_some(settings.syn_budget),
            cookies_active: h.last_cookie != 0 && now.wrapping_sub(h.last_cookie) <= 1,
        }
    }
}

/// The UDP budget as the data path sees it (`UDP_PENDING`, `SETTINGS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdpBudget {
    /// New UDP flows of the last `HANDSHAKE_BUCKETS` seconds their origin has not answered.
    pub unanswered_new_flows: u64,
    /// Above this, datagrams that would make a new flow are dropped (`drop_udp_budget`).
    pub udp_budget: u32,
}

impl UdpBudget {
    /// Reads `p` at coarse monotonic second `now`, as the data path would.
    pub fn from_maps(p: &lb_common::Handshakes, settings: &lb_common::Settings, now: u32) -> Self {
        let (started, done) = p
            .buckets
            .iter()
            .filter(|b| now.wrapping_sub(b.sec) < lb_common::HANDSHAKE_BUCKETS)
            .fold((0u64, 0u64), |(s, d), b| (s + b.started, d + b.done));
        Self {
            unanswered_new_flows: started.saturating_sub(done),
            udp_budget: settings.udp_budget,
        }
    }
}

/// Whole seconds of CLOCK_MONOTONIC_COARSE: the clock the data path stamps with
/// (`bpf_ktime_get_coarse_ns`).
fn coarse_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "seconds since boot"
    )]
    let s = ts.tv_sec as u32;
    s
}

#[derive(Debug, Serialize)]
pub struct VipStats {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub vip_id: u32,
    pub pool: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub origins: Vec<OriginStats>,
}

#[derive(Debug, Serialize)]
pub struct OriginStats {
    pub pool: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub origin_id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows opened and not yet closed, as the data path counts them (`ORIGIN_FLOWS`).
    pub open_flows: i64,
}

/// Counters for every load balancer of `cfg` that the maps know, without a running agent
/// (`lb-agent stats`): the plan under unknown health, with the ids matched against the maps
/// as a starting agent would match them.
pub fn collect(cfg: &Config, maps: &Maps) -> Result<Stats, DataplaneError> {
    let cur = current(maps)?;
    let want = plan::plan(cfg, &HealthTable::default(), &[]);
    let ids = reconcile::assign(&want, &cur, &reconcile::Assignment::default())
        .map_err(|e| DataplaneError::Host(e.to_string()))?;
    let mut stats = read(&want, &ids, maps)?;
    stats.flows = Some(FlowStates::read(
        maps,
        cfg.dataplane.flow_table_size as usize,
    )?);
    Ok(stats)
}

/// What the maps hold: their VIPs and present origins.
fn current(maps: &Maps) -> Result<Current, DataplaneError> {
    use crate::dataplane::map_err;
    let mut cur = Current::default();
    for item in maps.vips.iter() {
        let (k, v) = item.map_err(map_err("VIPS"))?;
        cur.vips.insert(k, v);
    }
    for id in 0..lb_common::MAX_ORIGINS {
        if let Ok(m) = maps.origins.get(&id, 0) {
            if m.flags & lb_common::ORIGIN_F_PRESENT != 0 {
                cur.origins.insert(id, m);
            }
        }
    }
    Ok(cur)
}

/// Counters for every VIP of `plan` that the maps know, named by `plan` and the id
/// assignment `ids` (the running agent's, published with its plan). The pool a VIP uses is
/// the one whose origins record the VIP's ring in the maps.
pub fn read(plan: &Plan, ids: &Assignment, maps: &Maps) -> Result<Stats, DataplaneError> {
    use crate::dataplane::map_err;
    let cur = current(maps)?;
    let by_id: HashMap<u32, &reconcile::OriginKey> =
        ids.origins.iter().map(|(k, id)| (*id, k)).collect();
    let mut vips = Vec::new();
    for v in &plan.vips {
        let Some(meta) = cur.vips.get(&v.key) else {
            continue;
        };
        // The pool of the VIP's own ring: every origin records its ring.
        let pool = cur
            .origins
            .iter()
            .find(|(_, m)| m.ring_id == meta.ring_id)
            .and_then(|(id, _)| by_id.get(id))
            .map(|k| k.pool.clone());
        let c = Maps::counters(&maps.vip_stats, meta.vip_id)?;
        let mut origins = Vec::new();
        // Every pool the load balancer may use (geo and random steering use several).
        let members = v
            .rings
            .iter()
            .filter_map(|r| plan.rings.get(r))
            .flat_map(|r| &r.members);
        for (ok, _) in members {
            let Some(&id) = ids.origins.get(ok) else {
                continue;
            };
            let oc = Maps::counters(&maps.origin_stats, id)?;
            let open = maps
                .origin_flows
                .get(&id, 0)
                .map_err(map_err("ORIGIN_FLOWS"))?;
            origins.push(OriginStats {
                pool: ok.pool.clone(),
                name: ok.name.clone(),
                address: ok.addr.to_string(),
                port: ok.port,
                origin_id: id,
                packets: oc.packets,
                bytes: oc.bytes,
                new_flows: oc.new_flows,
                reply_packets: oc.reply_packets,
                reply_bytes: oc.reply_bytes,
                #[expect(clippy::cast_possible_wrap, reason = "a count that may dip below 0")]
                open_flows: (open as i64).max(0),
            });
        }
        vips.push(VipStats {
            name: v.name.clone(),
            address: v.address.to_string(),
            port: v.port,
            protocol: plan::protocol_name(v.key.proto).to_owned(),
            vip_id: meta.vip_id,
            pool: pool.unwrap_or_else(|| "-".into()),
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
            origins,
        });
    }
    let totals = maps.event_totals()?;
    let events = lb_common::event::NAMES
        .iter()
        .zip(totals)
        .map(|(n, v)| ((*n).to_owned(), v))
        .collect();
    let syn_flood = match (maps.handshakes.get(&0, 0), maps.settings.get(&0, 0)) {
        (Ok(h), Ok(s)) => SynFlood::from_maps(&h, &s, coarse_now()),
        _ => SynFlood::default(),
    };
    let udp_budget = match (maps.udp_pending.get(&0, 0), maps.settings.get(&0, 0)) {
        (Ok(p), Ok(s)) => UdpBudget::from_maps(&p, &s, coarse_now()),
        _ => UdpBudget::default(),
    };
    Ok(Stats {
        vips,
        events,
        syn_flood,
        udp_budget,
        flows: None,
    })
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for v in &self.vips {
            writeln!(
                f,
                "load balancer {} {} {} (pool {}): {} new flows, {} packets / {} bytes in, {} packets / {} bytes back",
                v.name, v.protocol, crate::status::join_host_port(&v.address, v.port), v.pool, v.new_flows, v.packets, v.bytes, v.reply_packets, v.reply_bytes
            )?;
            writeln!(
                f,
                "  {:<20} {:<22} {:>10} {:>7} {:>10} {:>12} {:>12}",
                "origin", "address", "new flows", "share", "open flows", "packets", "bytes"
            )?;
            let total: u64 = v.origins.iter().map(|o| o.new_flows).sum();
            for o in &v.origins {
                #[expect(clippy::cast_precision_loss, reason = "display only")]
                let share = if total == 0 {
                    0.0
                } else {
                    o.new_flows as f64 * 100.0 / total as f64
                };
                writeln!(
                    f,
                    "  {:<20} {:<22} {:>10} {:>6.1}% {:>10} {:>12} {:>12}",
                    format!("{}/{}", o.pool, o.name),
                    crate::status::join_host_port(&o.address, o.port),
                    o.new_flows,
                    share,
                    o.open_flows,
                    o.packets,
                    o.bytes
                )?;
            }
        }
        let sf = &self.syn_flood;
        writeln!(
            f,
            "handshakes in flight: {} (SYN cookies {}){}",
            sf.handshakes_in_flight,
            match sf.syn_budget {
                None => "off".to_owned(),
                Some(0) => "always".to_owned(),
                Some(b) => format!("from {b}"),
            },
            if sf.cookies_active {
                ": answering SYNs with cookies now"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "new UDP flows unanswered (last {} s): {} (budget {})",
            lb_common::HANDSHAKE_BUCKETS,
            self.udp_budget.unanswered_new_flows,
            self.udp_budget.udp_budget
        )?;
        if let Some(flows) = &self.flows {
            let rows: Vec<String> = flows
                .rows()
                .iter()
                .map(|(p, s, n)| format!("{p} {s} {n}"))
                .collect();
            writeln!(f, "flows: {}", rows.join(", "))?;
        }
        writeln!(f, "data path events:")?;
        for (k, v) in self.events.iter().filter(|(_, v)| **v > 0) {
            writeln!(f, "  {k:<22} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{FlowStates, SynFlood};
    use lb_common::{
        HandshakeBucket, Handshakes, RevFlow, Settings, CT_ESTABLISHED, CT_FIN_CLIENT,
        CT_FIN_ORIGIN, CT_SYNACK, CT_UDP, CT_UDP_STREAM,
    };

    #[test]
    fn flows_are_counted_by_protocol_and_state_udp_as_answered_or_not() {
        let s = Settings {
            syn_secs: 10,
            established_secs: 1000,
            half_closed_secs: 300,
            reuse_closed_secs: 120,
            udp_secs: 120,
            udp_unreplied_secs: 30,
            ..Settings::default()
        };
        let now = 10_000;
        let mut f = FlowStates::default();
        for (flags, idle) in [
            (0, 1),
            (CT_SYNACK | CT_ESTABLISHED, 500),
            (CT_ESTABLISHED | CT_FIN_CLIENT, 1),
            (CT_ESTABLISHED | CT_FIN_CLIENT | CT_FIN_ORIGIN, 1),
            (0, 11),
            (CT_UDP | CT_ESTABLISHED | CT_UDP_STREAM, 100),
            (CT_UDP | CT_ESTABLISHED | CT_UDP_STREAM, 121),
            (CT_UDP | CT_ESTABLISHED, 20),
            (CT_UDP | CT_ESTABLISHED, 31),
            (CT_UDP, 29),
            (CT_UDP, 31),
        ] {
            let r = RevFlow {
                flags,
                last_seen: now - idle,
                ..RevFlow::default()
            };
            f.add(&r, &s, now);
        }
        assert_eq!(
            f,
            FlowStates {
                tcp_handshake: 1,
                tcp_established: 1,
                tcp_half_closed: 1,
                tcp_closed: 1,
                tcp_expired: 1,
                udp_conversation: 1,
                udp_answered: 1,
                udp_unanswered: 1,
                udp_expired: 3,
            }
        );
        assert_eq!(f.rows()[5], ("udp", "conversation", 1));
    }

    #[test]
    fn handshakes_in_flight_count_only_the_syn_window() {
        let mut h = Handshakes::default();
        h.buckets[0] = HandshakeBucket {
            sec: 100,
            _pad: 0,
            started: 50,
            done: 10,
        };
        h.buckets[1] = HandshakeBucket {
            sec: 89,
            _pad: 0,
            started: 1000,
            done: 0,
        };
        h.last_cookie = 99;
        let s = Settings {
            syn_secs: 10,
            syn_budget: 20,
            ..Settings::default()
        };
        let f = SynFlood::from_maps(&h, &s, 100);
        assert_eq!(
            f.handshakes_in_flight, 40,
            "second 89 is outside the 11 s window"
        );
        assert_eq!(f.syn_budget, Some(20));
        assert!(f.cookies_active);
        let off = SynFlood::from_maps(
            &h,
            &Settings {
                syn_budget: u32::MAX,
                ..s
            },
            105,
        );
        assert_eq!(off.syn_budget, None);
        assert!(!off.cookies_active, "no cookie for 6 s");
    }
}
