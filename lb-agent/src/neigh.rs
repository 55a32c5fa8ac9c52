//! Keeps the neighbour (ARP) entries of origin next hops resolved, so that `bpf_fib_lookup`
//! in the data path finds a MAC address for the very first packet of a flow.
//!
//! The FIB helper never resolves a neighbour itself: on a miss it returns NO_NEIGH and the
//! data path can only hand the packet to the stack, which drops it when the SNAT address is
//! local (martian source). Linux 5.16 added *managed* neighbour entries (NTF_EXT_MANAGED,
//! commit 7482e3841d52) for exactly this: the kernel keeps them resolved on its own. We create
//! one per next hop with iproute2 (`ip neigh replace ... managed extern_learn`); the
//! `extern_learn` flag marks them as ours so that removal never touches the host's entries.

use std::{collections::BTreeSet, net::Ipv4Addr, process::Command};

/// The next hop and device towards `addr`, from the kernel's routing table.
pub fn next_hop(addr: Ipv4Addr) -> Result<(Ipv4Addr, String), String> {
    let out = Command::new("ip")
        .args(["-4", "route", "get", &addr.to_string()])
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

/// Parses `ip route get` output: `10.0.11.2 via 10.0.0.254 dev eth1 src ...`.
pub fn parse_route_get(text: &str, addr: Ipv4Addr) -> Result<(Ipv4Addr, String), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev").ok_or_else(|| format!("no device in route to {addr}: {text}"))?;
    let hop = match after("via") {
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
    managed: BTreeSet<(Ipv4Addr, String)>,
}

impl Neighbours {
    /// Ensures a managed entry for the next hop of every address in `origins` and removes
    /// the ones this agent made that are no longer needed. Returns warnings (a missing entry
    /// only costs the first packets of flows a trip through the stack, so it is not fatal).
    pub fn sync(&mut self, origins: impl IntoIterator<Item = Ipv4Addr>) -> Vec<String> {
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

    #[test]
    fn direct_route() {
        let a = Ipv4Addr::new(10, 0, 11, 2);
        let r =
            parse_route_get("10.0.11.2 dev ptl1 src 10.0.11.1 uid 0 \n    cache \n", a).unwrap();
        assert_eq!(r, (a, "ptl1".to_owned()));
    }

    #[test]
    fn via_gateway() {
        let a = Ipv4Addr::new(192, 0, 2, 7);
        let r =
            parse_route_get("192.0.2.7 via 10.0.0.254 dev eth1 src 10.0.0.1 uid 0\n", a).unwrap();
        assert_eq!(r, (Ipv4Addr::new(10, 0, 0, 254), "eth1".to_owned()));
    }

    #[test]
    fn no_device_is_an_error() {
        assert!(parse_route_get("unreachable", Ipv4Addr::LOCALHOST).is_err());
    }
}
