//! Which origins are probed, and on which port: the health targets of a config. An origin
//! of a monitored pool is one target per origin port of the load balancers that use its
//! pool (the monitor's `port`, when set, overrides).

use std::collections::BTreeMap;

use super::Target;
use crate::config::{Config, Origin, Pool};

/// The health target of `origin` when `pool` is used with default origin port `ring_port`;
/// `None` when the pool has no monitor.
pub fn target(cfg: &Config, pool: &Pool, origin: &Origin, ring_port: u16) -> Option<Target> {
    let m = cfg.monitor(pool.monitor.as_deref()?)?;
    let port = if m.port != 0 {
        m.port
    } else {
        origin.port.unwrap_or(ring_port)
    };
    Some(Target {
        pool: pool.name.clone(),
        origin: origin.name.clone(),
        address: origin.address,
        port,
    })
}

/// Every health target the config asks for, with its monitor's name.
/// Enabled origins of monitored pools; the port comes from the monitor, else the origin,
/// else each load balancer that uses the pool.
pub fn targets(cfg: &Config) -> BTreeMap<Target, String> {
    let mut out = BTreeMap::new();
    for pool in &cfg.pools {
        let Some(mname) = pool.monitor.as_deref() else {
            continue;
        };
        let mut ring_ports: Vec<u16> = cfg
            .users_of(&pool.name)
            .filter(|l| l.enabled)
            .map(|l| l.origin_port)
            .collect();
        ring_ports.sort_unstable();
        ring_ports.dedup();
        for o in pool.origins.iter().filter(|o| o.enabled) {
            for port in &ring_ports {
                if let Some(t) = target(cfg, pool, o, *port) {
                    out.insert(t, mname.to_owned());
                }
            }
            if ring_ports.is_empty() {
                if let Some(t) = o.port.and_then(|p| target(cfg, pool, o, p)) {
                    out.insert(t, mname.to_owned());
                }
            }
        }
    }
    out
}
