//! `[dataplane]`: interfaces, pin directory, SNAT address and ports, table size, TCP
//! timeouts and SYN cookies, UDP timeouts and the UDP budget.

use super::FieldErrors;
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use lb_common::MAX_INTERFACES;

use super::{ip, port};
use crate::config::{
    defaults::{
        DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_PIN_DIR, DEFAULT_REUSE_AFTER_CLOSE,
        DEFAULT_REUSE_AFTER_IDLE, DEFAULT_SNAT_PORTS, DEFAULT_SYN_BUDGET, DEFAULT_SYN_TIMEOUT,
        DEFAULT_UDP_BUDGET, DEFAULT_UDP_TIMEOUT, DEFAULT_UDP_UNREPLIED_TIMEOUT, MAX_FLOW_TABLE,
        MAX_UDP_TIMEOUT, MIN_FLOW_TABLE,
    },
    raw::{RawDataplane, RawSnatAddress, SynCookies},
    types::{Dataplane, Snat6},
};

/// The SNAT addresses of `dataplane.snat_address`, which the load balancers are checked
/// against (a VIP is none of them; origins of a family need one of that family).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Snat {
    /// Every entry is usable (set, and each entry parsed; else an error said why). Only
    /// then is a family's absence worth an error per load balancer.
    pub complete: bool,
    /// The IPv4 prefix: first address and count.
    pub v4: Option<(Ipv4Addr, u32)>,
    pub v6: Option<Snat6>,
}

impl Snat {
    /// Is `a` one of the SNAT addresses?
    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self
                .v4
                .is_some_and(|(s, n)| u32::from(a).wrapping_sub(u32::from(s)) < n),
            IpAddr::V6(a) => self.v6.is_some_and(|s| s.contains(a)),
        }
    }
}

/// The dataplane settings, `None` when a SNAT address or a port is unusable (an error
/// says why), and the SNAT addresses alone, which the load balancers are checked against.
pub(super) fn validate(dp: &RawDataplane, errors: &mut FieldErrors) -> (Option<Dataplane>, Snat) {
    interfaces(&dp.interfaces, errors);
    let pin_dir = dp
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    if !pin_dir.is_absolute() {
        errors.invalid(
            "dataplane.pin_dir",
            format!("\"{}\" is relative", pin_dir.display()),
            format!("use an absolute path on a bpffs, e.g. \"{DEFAULT_PIN_DIR}\""),
        );
    }
    let snat = match &dp.snat_address {
        Some(s) => snat_addresses(s, errors),
        None => {
            errors.invalid(
                "dataplane.snat_address",
                "missing",
                "set it to an address of this host that origins route back to (one per family in use: [\"198.51.100.1\", \"2001:db8::1\"])",
            );
            Snat::default()
        }
    };
    let (snat_min, snat_max) = snat_ports(dp.snat_ports, errors);
    let flow_table_size = dp
        .flow_table_size
        .unwrap_or(lb_common::DEFAULT_FLOW_TABLE_SIZE);
    if !(MIN_FLOW_TABLE..=MAX_FLOW_TABLE).contains(&flow_table_size) {
        errors.invalid(
            "dataplane.flow_table_size",
            format!("{flow_table_size} is out of range"),
            format!("use {MIN_FLOW_TABLE}-{MAX_FLOW_TABLE}"),
        );
    }
    let t = timeouts(dp, errors);
    let syn_budget = syn_budget(dp, errors);
    let udp = udp(dp, errors);
    let (true, Some(snat_port_min), Some(snat_port_max)) = (snat.complete, snat_min, snat_max)
    else {
        return (None, snat);
    };
    let (snat_address, snat_count) = snat.v4.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    let dataplane = Dataplane {
        interfaces: dp.interfaces.clone(),
        xdp_mode: dp.xdp_mode,
        pin_dir,
        snat_address,
        snat_count,
        snat6: snat.v6,
        snat_port_min,
        snat_port_max,
        snat_ports_auto: dp.snat_ports.is_none(),
        flow_table_size,
        snat_port_reuse_after_close: t.reuse_close,
        snat_port_reuse_after_idle: t.reuse_idle,
        answer_ping: dp.answer_ping.unwrap_or(true),
        route_other: dp.route_other.unwrap_or(false),
        syn_timeout: t.syn,
        half_closed_timeout: t.half_closed,
        syn_budget,
        udp_timeout: udp.timeout,
        udp_unreplied_timeout: udp.unreplied,
        udp_budget: udp.budget,
    };
    (Some(dataplane), snat)
}

/// `snat_address`: one entry (either family), or a list of at most one IPv4 and one IPv6
/// entry. Each entry is an address or a prefix (`snat_prefix`).
fn snat_addresses(raw: &RawSnatAddress, errors: &mut FieldErrors) -> Snat {
    let entries = raw.entries();
    if entries.is_empty() {
        errors.invalid(
            "dataplane.snat_address",
            "an empty list",
            "list one IPv4 and/or one IPv6 address, e.g. [\"198.51.100.1\", \"2001:db8::1\"]",
        );
        return Snat::default();
    }
    let mut snat = Snat {
        complete: true,
        ..Snat::default()
    };
    let mut first: [Option<String>; 2] = [None, None];
    for (field, text) in &entries {
        let Some(entry) = snat_prefix(text, field, errors) else {
            snat.complete = false;
            continue;
        };
        let (family, name) = match entry {
            SnatEntry::V4(..) => (0, "IPv4"),
            SnatEntry::V6(_) => (1, "IPv6"),
        };
        if let Some(other) = &first[family] {
            errors.conflict(
                field.as_str(),
                format!("a second {name} entry ({other} is {name} too)"),
                "list at most one IPv4 and one IPv6 address or prefix",
            );
            snat.complete = false;
            continue;
        }
        first[family] = Some(field.clone());
        match entry {
            SnatEntry::V4(a, n) => snat.v4 = Some((a, n)),
            SnatEntry::V6(s) => snat.v6 = Some(s),
        }
    }
    snat
}

/// One `snat_address` entry.
enum SnatEntry {
    V4(Ipv4Addr, u32),
    V6(Snat6),
}

/// One `snat_address` entry in `field`: an address, or a prefix of at most `MAX_SNAT_ADDRS`
/// addresses (IPv4 "/24" to "/32", IPv6 "/120" to "/128"), every one of which is used.
fn snat_prefix(s: &str, field: &str, errors: &mut FieldErrors) -> Option<SnatEntry> {
    let Some((addr, len)) = s.split_once('/') else {
        return match ip(s, field, errors)? {
            IpAddr::V4(a) => Some(SnatEntry::V4(a, 1)),
            IpAddr::V6(a) => Some(SnatEntry::V6(Snat6 {
                address: a,
                count: 1,
            })),
        };
    };
    let a = ip(addr, field, errors)?;
    let bits: u32 = if a.is_ipv4() { 32 } else { 128 };
    let min_len = bits - lb_common::MAX_SNAT_ADDRS.trailing_zeros();
    let Some(len) = len
        .parse::<u32>()
        .ok()
        .filter(|l| (min_len..=bits).contains(l))
    else {
        errors.invalid(
            field,
            format!("\"{s}\" has prefix length \"{len}\""),
            format!(
                "use /{min_len} to /{bits} (at most {} addresses)",
                lb_common::MAX_SNAT_ADDRS
            ),
        );
        return None;
    };
    let count = 1u32 << (bits - len);
    let host = match a {
        IpAddr::V4(a) => u32::from(a) % count,
        IpAddr::V6(a) => u32::try_from(u128::from(a) % u128::from(count)).unwrap_or(1),
    };
    if host != 0 {
        let net = match a {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & !(count - 1))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !u128::from(count - 1))),
        };
        errors.invalid(
            field,
            format!("\"{s}\" has host bits set"),
            format!("write the prefix as \"{net}/{len}\""),
        );
        return None;
    }
    Some(match a {
        IpAddr::V4(a) => SnatEntry::V4(a, count),
        IpAddr::V6(a) => SnatEntry::V6(Snat6 { address: a, count }),
    })
}

fn interfaces(interfaces: &[String], errors: &mut FieldErrors) {
    if interfaces.is_empty() {
        errors.invalid(
            "dataplane.interfaces",
            "empty",
            "list the interfaces to attach XDP to, e.g. [\"eth0\"]",
        );
    }
    let mut seen_if = HashSet::new();
    for (i, name) in interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            errors.invalid(
                format!("dataplane.interfaces[{i}]"),
                format!("\"{name}\" is not an interface name"),
                "use 1-15 characters, no '/' or spaces",
            );
        }
        if !seen_if.insert(name) {
            errors.conflict(
                format!("dataplane.interfaces[{i}]"),
                format!("\"{name}\" is listed twice"),
                "list each interface once",
            );
        }
    }
    if interfaces.len() > MAX_INTERFACES as usize {
        errors.invalid(
            "dataplane.interfaces",
            format!("{} interfaces", interfaces.len()),
            format!("at most {MAX_INTERFACES} are supported"),
        );
    }
}

/// `snat_ports = [first, last]`, each a port, in order, above the well-known ports.
fn snat_ports(ports: Option<[u32; 2]>, errors: &mut FieldErrors) -> (Option<u16>, Option<u16>) {
    let [smin, smax] = ports.unwrap_or(DEFAULT_SNAT_PORTS.map(u32::from));
    let snat_min = port(smin, "dataplane.snat_ports[0]", errors);
    let snat_max = port(smax, "dataplane.snat_ports[1]", errors);
    if let (Some(a), Some(b)) = (snat_min, snat_max) {
        if a > b {
            errors.invalid(
                "dataplane.snat_ports",
                format!("[{a}, {b}] is empty"),
                "write [first, last] with first <= last",
            );
        } else if a < 1024 {
            errors.invalid(
                "dataplane.snat_ports",
                format!("starts at {a}, inside the well-known ports"),
                "start at 1024 or above",
            );
        }
    }
    (snat_min, snat_max)
}

/// Idle seconds per TCP state, in force.
struct Timeouts {
    reuse_close: u32,
    reuse_idle: u32,
    syn: u32,
    half_closed: u32,
}

/// `tcp_timeouts` (and the older `snat_port_reuse_after_*`): syn <= half_closed <=
/// established, and an open flow kept at least as long as a closed one.
fn timeouts(dp: &RawDataplane, errors: &mut FieldErrors) -> Timeouts {
    let reuse_close = dp
        .snat_port_reuse_after_close
        .unwrap_or(DEFAULT_REUSE_AFTER_CLOSE);
    let tt = &dp.tcp_timeouts;
    if tt.established.is_some() && dp.snat_port_reuse_after_idle.is_some() {
        errors.invalid(
            "dataplane.snat_port_reuse_after_idle",
            "set together with tcp_timeouts.established, which replaces it",
            "keep only tcp_timeouts.established",
        );
    }
    let (reuse_idle, idle_field) = match (tt.established, dp.snat_port_reuse_after_idle) {
        (Some(v), _) => (v, "dataplane.tcp_timeouts.established"),
        (None, Some(v)) => (v, "dataplane.snat_port_reuse_after_idle"),
        (None, None) => (
            DEFAULT_REUSE_AFTER_IDLE,
            "dataplane.tcp_timeouts.established",
        ),
    };
    if reuse_idle < reuse_close {
        errors.invalid(
            idle_field,
            format!("{reuse_idle} s is shorter than snat_port_reuse_after_close ({reuse_close} s)"),
            "an open flow must be kept at least as long as a closed one",
        );
    }
    let syn_timeout = tt.syn.unwrap_or(DEFAULT_SYN_TIMEOUT);
    let max_syn = lb_common::HANDSHAKE_BUCKETS - 1;
    if !(1..=max_syn).contains(&syn_timeout) {
        errors.invalid(
            "dataplane.tcp_timeouts.syn",
            format!("{syn_timeout} s is out of range"),
            format!("use 1-{max_syn} (a handshake that takes longer is retried by the client's next SYN)"),
        );
    }
    let half_closed_timeout = tt
        .half_closed
        .unwrap_or(DEFAULT_HALF_CLOSED_TIMEOUT.min(reuse_idle));
    if half_closed_timeout < syn_timeout || half_closed_timeout > reuse_idle {
        errors.invalid(
            "dataplane.tcp_timeouts.half_closed",
            format!("{half_closed_timeout} s is out of range"),
            format!("use a value between tcp_timeouts.syn ({syn_timeout} s) and the established timeout ({reuse_idle} s)"),
        );
    }
    Timeouts {
        reuse_close,
        reuse_idle,
        syn: syn_timeout,
        half_closed: half_closed_timeout,
    }
}

/// `Settings::syn_budget` from `syn_cookies` and `syn_budget`.
fn syn_budget(dp: &RawDataplane, errors: &mut FieldErrors) -> u32 {
    match (dp.syn_cookies.unwrap_or_default(), dp.syn_budget) {
        (SynCookies::Auto, b) => {
            let b = b.unwrap_or(DEFAULT_SYN_BUDGET);
            if b == 0 || b == u32::MAX {
                errors.invalid(
                    "dataplane.syn_budget",
                    format!("{b} is out of range"),
                    "use 1-4294967294 (or syn_cookies = \"always\" / \"off\")",
                );
            }
            b
        }
        (SynCookies::Always, None) => 0,
        (SynCookies::Off, None) => u32::MAX,
        (c, Some(_)) => {
            errors.invalid(
                "dataplane.syn_budget",
                format!(
                    "only applies with syn_cookies = \"auto\" (it is \"{}\")",
                    if c == SynCookies::Always {
                        "always"
                    } else {
                        "off"
                    }
                ),
                "remove one of them",
            );
            0
        }
    }
}

/// The UDP settings in force.
struct Udp {
    timeout: u32,
    unreplied: u32,
    budget: u32,
}

/// `udp_timeout`, `udp_unreplied_timeout` (1 <= unreplied <= timeout <= a day) and
/// `udp_budget` (at least 1).
fn udp(dp: &RawDataplane, errors: &mut FieldErrors) -> Udp {
    let timeout = dp.udp_timeout.unwrap_or(DEFAULT_UDP_TIMEOUT);
    if !(1..=MAX_UDP_TIMEOUT).contains(&timeout) {
        errors.invalid(
            "dataplane.udp_timeout",
            format!("{timeout} s is out of range"),
            format!("use 1-{MAX_UDP_TIMEOUT} seconds (default {DEFAULT_UDP_TIMEOUT}, conntrack's udp_timeout_stream)"),
        );
    }
    let unreplied = dp
        .udp_unreplied_timeout
        .unwrap_or(DEFAULT_UDP_UNREPLIED_TIMEOUT.min(timeout));
    if unreplied == 0 || unreplied > timeout.clamp(1, MAX_UDP_TIMEOUT) {
        errors.invalid(
            "dataplane.udp_unreplied_timeout",
            format!("{unreplied} s is out of range"),
            format!("use 1 to udp_timeout ({timeout} s): a flow nobody answers is not kept longer than one that is answered"),
        );
    }
    let budget = dp.udp_budget.unwrap_or(DEFAULT_UDP_BUDGET);
    if budget == 0 {
        errors.invalid(
            "dataplane.udp_budget",
            "0 would drop every new UDP flow",
            format!("use 1-4294967295 (default {DEFAULT_UDP_BUDGET}; raise it for one-way protocols with many senders, such as syslog)"),
        );
    }
    Udp {
        timeout,
        unreplied,
        budget,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn interfaces_required() {
        assert_one(
            &errors_with("interfaces = [\"eth0\", \"eth1\"]", "interfaces = []"),
            "dataplane.interfaces",
        );
    }

    #[test]
    fn interface_listed_twice() {
        assert_one(
            &errors_with("\"eth0\", \"eth1\"", "\"eth0\", \"eth0\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn interface_name_too_long() {
        assert_one(
            &errors_with("\"eth1\"", "\"an-interface-name-too-long\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn pin_dir_must_be_absolute() {
        assert_one(
            &errors_with("\"/sys/fs/bpf/lbtest\"", "\"lbtest\""),
            "dataplane.pin_dir",
        );
    }

    #[test]
    fn snat_address_required() {
        assert_one(
            &errors_with("snat_address = \"10.0.0.1\"\n", ""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn snat_address_must_be_an_address() {
        let e = errors_with("\"10.0.0.1\"", "\"snat.example\"");
        assert_one(&e, "dataplane.snat_address");
        assert!(e[0].contains("not an IP address"), "{e:?}");
    }

    #[test]
    fn snat_address_one_per_family_in_a_list() {
        let c = Config::parse(GOOD6, Path::new("t")).expect("valid");
        let dp = &c.dataplane;
        assert_eq!(
            (dp.snat_address.to_string(), dp.snat_count),
            ("10.0.0.1".into(), 1)
        );
        let all: Vec<String> = dp.all_snat_addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, ["10.0.0.1", "2001:db8:ff::1"]);
        assert!(dp.is_snat_ip("2001:db8:ff::1".parse().unwrap()));
        assert!(!dp.is_snat_ip("2001:db8:ff::2".parse().unwrap()));
        // The list form with one entry is the single form.
        let one = Config::parse(
            &GOOD.replace(
                "snat_address = \"10.0.0.1\"",
                "snat_address = [\"10.0.0.1\"]",
            ),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(one.dataplane.snat_address.to_string(), "10.0.0.1");
        assert_eq!(one.dataplane.snat6, None);
    }

    #[test]
    fn snat_address_list_has_one_entry_per_family_at_most() {
        let e = errors_with(
            "snat_address = \"10.0.0.1\"",
            "snat_address = [\"10.0.0.1\", \"10.0.0.2\"]",
        );
        assert_one(&e, "dataplane.snat_address[1]");
        assert!(
            e[0].contains("a second IPv4 entry (dataplane.snat_address[0]"),
            "{e:?}"
        );
        let e = errors6_with(
            "\"2001:db8:ff::1\"]",
            "\"2001:db8:ff::1\", \"2001:db8:ff::2\"]",
        );
        assert_one(&e, "dataplane.snat_address[2]");
    }

    #[test]
    fn snat_address_list_not_empty() {
        let e = errors_with("snat_address = \"10.0.0.1\"", "snat_address = []");
        assert_one(&e, "dataplane.snat_address");
        assert!(e[0].contains("empty"), "{e:?}");
    }

    #[test]
    fn snat_address_of_another_type_names_both_forms() {
        let text = GOOD.replace("snat_address = \"10.0.0.1\"", "snat_address = 10");
        let e = format!(
            "{:?}",
            Config::parse(&text, Path::new("t")).expect_err("a number")
        );
        assert!(e.contains("2001:db8::1"), "{e}");
    }

    #[test]
    fn snat_address_ipv6_may_be_a_prefix_of_up_to_256_addresses() {
        let c = Config::parse(
            &GOOD6.replace("\"2001:db8:ff::1\"]", "\"2001:db8:ff::100/126\"]"),
            Path::new("t"),
        )
        .expect("a /126 is valid");
        let s6 = c.dataplane.snat6.expect("IPv6 SNAT");
        assert_eq!(s6.count, 4);
        let all: Vec<String> = s6.addresses().map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            [
                "2001:db8:ff::100",
                "2001:db8:ff::101",
                "2001:db8:ff::102",
                "2001:db8:ff::103"
            ]
        );
        let e = errors6_with("\"2001:db8:ff::1\"]", "\"2001:db8:ff::/119\"]");
        assert_one(&e, "dataplane.snat_address[1]");
        assert!(e[0].contains("/120 to /128"), "{e:?}");
        let e = errors6_with("\"2001:db8:ff::1\"]", "\"2001:db8:ff::1/126\"]");
        assert_one(&e, "dataplane.snat_address[1]");
        assert!(e[0].contains("\"2001:db8:ff::/126\""), "{e:?}");
    }

    #[test]
    fn snat_address_not_link_local_multicast_loopback_or_mapped() {
        for bad in ["fe80::1", "ff02::1", "::1", "::", "::ffff:10.0.0.1"] {
            let e = errors6_with("\"2001:db8:ff::1\"]", &format!("\"{bad}\"]"));
            assert_one(&e, "dataplane.snat_address[1]");
        }
    }

    #[test]
    fn an_ipv6_snat_address_of_the_host_narrows_the_ports_too() {
        let mut dp = Config::parse(GOOD6, Path::new("t"))
            .expect("valid")
            .dataplane;
        assert!(dp.snat_ports_auto);
        dp.resolve_snat_ports(&["2001:db8:ff::2".parse().unwrap()]);
        assert_eq!(dp.snat_port_min, 1024);
        dp.resolve_snat_ports(&["2001:db8:ff::1".parse().unwrap()]);
        assert_eq!((dp.snat_port_min, dp.snat_port_max), (61000, 65535));
    }

    #[test]
    fn snat_address_may_be_a_prefix_of_up_to_256_addresses() {
        let c = Config::parse(
            &GOOD.replace(
                "snat_address = \"10.0.0.1\"",
                "snat_address = \"10.0.9.0/30\"",
            ),
            Path::new("t"),
        )
        .expect("a /30 is valid");
        let dp = &c.dataplane;
        assert_eq!(
            (dp.snat_address, dp.snat_count),
            ("10.0.9.0".parse().unwrap(), 4)
        );
        let all: Vec<String> = dp.snat_addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, ["10.0.9.0", "10.0.9.1", "10.0.9.2", "10.0.9.3"]);
        assert!(dp.is_snat_address("10.0.9.3".parse().unwrap()));
        assert!(!dp.is_snat_address("10.0.9.4".parse().unwrap()));
        assert!(!dp.is_snat_address("10.0.8.255".parse().unwrap()));
        let e = errors_with("\"10.0.0.1\"", "\"10.0.9.1/30\"");
        assert_one(&e, "dataplane.snat_address");
        assert!(
            e[0].contains("\"10.0.9.0/30\""),
            "the fix names the prefix: {e:?}"
        );
        let e = errors_with("\"10.0.0.1\"", "\"10.0.0.0/23\"");
        assert_one(&e, "dataplane.snat_address");
        assert!(e[0].contains("/24 to /32"), "{e:?}");
        assert_one(
            &errors_with("\"10.0.0.1\"", "\"10.0.0.0/x\""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn unset_snat_ports_are_the_full_range_unless_the_host_uses_a_snat_address() {
        let text = GOOD.replace("snat_ports = [40000, 40100]\n", "");
        assert_ne!(text, GOOD, "fixture edit applied");
        let c = Config::parse(&text, Path::new("t")).expect("valid");
        let mut dp = c.dataplane.clone();
        assert!(dp.snat_ports_auto);
        dp.resolve_snat_ports(&["192.0.2.7".parse().unwrap()]);
        assert_eq!((dp.snat_port_min, dp.snat_port_max), (1024, 65535));
        dp.resolve_snat_ports(&["10.0.0.1".parse().unwrap()]);
        assert_eq!(
            (dp.snat_port_min, dp.snat_port_max),
            (61000, 65535),
            "a SNAT address the host uses keeps its ports above the ephemeral range"
        );
        // Set by hand: left alone.
        let mut set = Config::parse(GOOD, Path::new("t"))
            .expect("valid")
            .dataplane;
        set.resolve_snat_ports(&["10.0.0.1".parse().unwrap()]);
        assert_eq!((set.snat_port_min, set.snat_port_max), (40000, 40100));
        // 64512 ports x 1 address / 120 s.
        let rate = (64512.0 / 120.0_f64).round();
        let mut full = c.dataplane.clone();
        full.resolve_snat_ports(&[]);
        assert_eq!(full.sustained_rate_per_origin().round(), rate);
    }

    #[test]
    fn snat_ports_must_be_ordered() {
        assert_one(
            &errors_with("[40000, 40100]", "[40100, 40000]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn snat_ports_must_be_ports() {
        assert_one(
            &errors_with("[40000, 40100]", "[40000, 70000]"),
            "dataplane.snat_ports[1]",
        );
    }

    #[test]
    fn snat_ports_not_well_known() {
        assert_one(
            &errors_with("[40000, 40100]", "[80, 40100]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn flow_table_size_in_range() {
        assert_one(
            &errors_with("pin_dir", "flow_table_size = 10\npin_dir"),
            "dataplane.flow_table_size",
        );
    }

    #[test]
    fn snat_reuse_idle_not_below_close() {
        assert_one(
            &errors_with(
                "pin_dir",
                "snat_port_reuse_after_close = 300\nsnat_port_reuse_after_idle = 60\npin_dir",
            ),
            "dataplane.snat_port_reuse_after_idle",
        );
    }

    #[test]
    fn tcp_timeouts_in_range() {
        assert_one(
            &errors_with("pin_dir", "tcp_timeouts = { syn = 60 }\npin_dir"),
            "dataplane.tcp_timeouts.syn",
        );
        assert_one(
            &errors_with("pin_dir", "tcp_timeouts = { half_closed = 5 }\npin_dir"),
            "dataplane.tcp_timeouts.half_closed",
        );
        assert_one(
            &errors_with(
                "pin_dir",
                "tcp_timeouts = { established = 3600 }\nsnat_port_reuse_after_idle = 3600\npin_dir",
            ),
            "dataplane.snat_port_reuse_after_idle",
        );
    }

    #[test]
    fn syn_cookie_settings() {
        assert_one(
            &errors_with("pin_dir", "syn_budget = 0\npin_dir"),
            "dataplane.syn_budget",
        );
        assert_one(
            &errors_with("pin_dir", "syn_cookies = \"off\"\nsyn_budget = 10\npin_dir"),
            "dataplane.syn_budget",
        );
        let c = Config::parse(
            &GOOD.replace("pin_dir", "syn_cookies = \"always\"\npin_dir"),
            Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(c.dataplane.syn_budget, 0);
    }

    #[test]
    fn udp_settings_default_to_conntracks() {
        let dp = Config::parse(GOOD, Path::new("t"))
            .expect("valid")
            .dataplane;
        assert_eq!(
            (dp.udp_timeout, dp.udp_unreplied_timeout, dp.udp_budget),
            (120, 30, 4096)
        );
        let dp = Config::parse(
            &GOOD.replace(
                "pin_dir",
                "udp_timeout = 20\nudp_unreplied_timeout = 5\nudp_budget = 100000\npin_dir",
            ),
            Path::new("t"),
        )
        .expect("valid")
        .dataplane;
        assert_eq!(
            (dp.udp_timeout, dp.udp_unreplied_timeout, dp.udp_budget),
            (20, 5, 100_000)
        );
        // A short udp_timeout alone brings the unreplied default down with it.
        let dp = Config::parse(
            &GOOD.replace("pin_dir", "udp_timeout = 10\npin_dir"),
            Path::new("t"),
        )
        .expect("valid")
        .dataplane;
        assert_eq!((dp.udp_timeout, dp.udp_unreplied_timeout), (10, 10));
    }

    #[test]
    fn udp_timeout_in_range() {
        for bad in ["0", "86401"] {
            let e = errors_with(
                "pin_dir",
                &format!("udp_timeout = {bad}\nudp_unreplied_timeout = 1\npin_dir"),
            );
            assert_one(&e, "dataplane.udp_timeout");
            assert!(e[0].contains("use 1-86400"), "{e:?}");
        }
    }

    #[test]
    fn udp_unreplied_timeout_between_1_and_udp_timeout() {
        assert_one(
            &errors_with("pin_dir", "udp_unreplied_timeout = 0\npin_dir"),
            "dataplane.udp_unreplied_timeout",
        );
        let e = errors_with(
            "pin_dir",
            "udp_timeout = 60\nudp_unreplied_timeout = 61\npin_dir",
        );
        assert_one(&e, "dataplane.udp_unreplied_timeout");
        assert!(e[0].contains("udp_timeout (60 s)"), "{e:?}");
    }

    #[test]
    fn udp_budget_not_zero() {
        let e = errors_with("pin_dir", "udp_budget = 0\npin_dir");
        assert_one(&e, "dataplane.udp_budget");
        assert!(e[0].contains("syslog"), "{e:?}");
    }

    #[test]
    fn answer_ping_and_route_other_are_read() {
        let c = Config::parse(
            &GOOD.replace(
                "pin_dir",
                "answer_ping = false\nroute_other = true\npin_dir",
            ),
            Path::new("t"),
        )
        .expect("valid");
        assert!(!c.dataplane.answer_ping);
        assert!(c.dataplane.route_other);
    }
}
