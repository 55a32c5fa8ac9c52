//! Keeps the neighbour (ARP, and IPv6 neighbour discovery) entries of origin next hops resolved, so that `bpf_fib_lookup`
//! in the data path finds a MAC address for the very first packet of a flow.
//!
//! The FIB helper never resolves a neighbour itself: on a miss it returns NO_NEIGH and the
//! data path can only hand the packet to the stack, which drops it when the SNAT address is
//! local (martian source). Linux 5.16 added *managed* neighbour entries (NTF_EXT_MANAGED,
//! commit 7482e3841d52) for exactly this: the kernel keeps them resolved on its own. We create
//! one per next hop with iproute2 (`ip neigh replace ... managed extern_learn`); the
//! `extern_learn` flag marks them as ours so that removal never touches the host's entries.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

/// The next hop and device towards `addr`, from the kernel's routing table (of `addr`'s
/// family).
pub fn next_hop(addr: IpAddr) -> Result<(IpAddr, String), String> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let out = Command::new("ip")
        .args([family, "route", "get", &addr.to_string()])
        .output()
        .map_err(|e| format!("running `ip route get`: {e} (install iproute2)"))?;
    if !out.status.success() {
        return Err(format!(
            "no route to {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_route_get(&String::from_utf8_lossy(&out.stdout), addr)
}

/// Parses `ip route get` output: `10.0.11.2 via 10.0.0.254 dev eth1 src ...`,
/// `2001:db8::2 from :: via fe80::1 dev eth1 ...`, or a gateway of the other family
/// (`via inet6 fe80::1`, `via inet 10.0.0.1`, RFC 5549).
pub fn parse_route_get(text: &str, addr: IpAddr) -> Result<(IpAddr, String), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev").ok_or_else(|| format!("no device in route to {addr}: {text}"))?;
    let hop = match after("via") {
        Some(&("inet" | "inet6")) => words
            .iter()
            .position(|w| *w == "via")
            .and_then(|i| words.get(i + 2))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad gateway in route to {addr}: {text}"))?,
        Some(v) => v
            .parse()
            .map_err(|_| format!("bad gateway {v} in route to {addr}"))?,
        None => addr,
    };
    Ok(((hop), (*dev).to_owned()))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The managed neighbour entries this agent keeps.
#[derive(Debug, Default)]
pub struct Neighbours {
    managed: BTreeSet<(IpAddr, String)>,
}

impl Neighbours {
    /// Ensures a managed entry for the next hop of every address in `origins` and removes
    /// the ones this agent made that are no longer needed. Returns warnings (a missing entry
    /// only costs the first packets of flows a trip through the stack, so it is not fatal).
    pub fn sync(&mut self, origins: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut want = BTreeSet::new();
        for addr in origins {
            match next_hop(addr) {
                Ok(h) => {
                    want.insert(h);
                }
                Err(e) => warnings.push(format!("origin {addr}: {e}")),
            }
        }
        for (hop, dev) in &want {
            let hop_s = hop.to_string();
            if let Err(e) = ip(&[
                "neigh",
                "replace",
                &hop_s,
                "dev",
                dev,
                "managed",
                "extern_learn",
            ]) {
                warnings.push(format!(
                    "cannot keep neighbour {hop} on {dev} resolved ({e}); needs Linux 5.16+ and iproute2 5.16+. First packets to it pass through the stack"
                ));
            }
        }
        for (hop, dev) in self.managed.difference(&want) {
            let _ = ip(&["neigh", "del", &hop.to_string(), "dev", dev]);
        }
        self.managed = want;
        warnings
    }

    /// Removes every entry this agent made (on teardown).
    pub fn clear(&mut self) {
        for (hop, dev) in std::mem::take(&mut self.managed) {
            let _ = ip(&["neigh", "del", &hop.to_string(), "dev", &dev]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn direct_route() {
        let a = IpAddr::from([10, 0, 11, 2]);
        let r =
            parse_route_get("10.0.11.2 dev ptl1 src 10.0.11.1 uid 0 \n    cache \n", a).unwrap();
        assert_eq!(r, (a, "ptl1".to_owned()));
    }

    #[test]
    fn via_gateway() {
        let a = IpAddr::from([192, 0, 2, 7]);
        let r =
            parse_route_get("192.0.2.7 via 10.0.0.254 dev eth1 src 10.0.0.1 uid 0\n", a).unwrap();
        assert_eq!(r, (IpAddr::from([10, 0, 0, 254]), "eth1".to_owned()));
    }

    #[test]
    fn ipv6_routes_direct_via_link_local_and_via_inet() {
        let a: IpAddr = "2001:db8:11::2".parse().unwrap();
        let direct = "2001:db8:11::2 from :: dev ptl1 proto kernel src 2001:db8:11::1 metric 256 pref medium\n";
        assert_eq!(parse_route_get(direct, a).unwrap(), (a, "ptl1".to_owned()));
        let via = "2001:db8:11::2 from :: via fe80::1 dev eth1 proto static src 2001:db8::1 metric 1024 pref medium\n";
        assert_eq!(
            parse_route_get(via, a).unwrap(),
            ("fe80::1".parse().unwrap(), "eth1".to_owned())
        );
        let v4_gw =
            "2001:db8:11::2 from :: via inet 10.0.0.254 dev eth1 proto static metric 1024\n";
        assert_eq!(
            parse_route_get(v4_gw, a).unwrap(),
            (IpAddr::from([10, 0, 0, 254]), "eth1".to_owned())
        );
    }

    #[test]
    fn no_device_is_an_error() {
        assert!(parse_route_get("unreachable", IpAddr::V4(Ipv4Addr::LOCALHOST)).is_err());
    }
}
