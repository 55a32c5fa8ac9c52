//! The integration tests, one binary with a module per area. Kernel-touching tests take
//! `lb_testbed::serial()` (one at a time in this process) and clean up on drop, also when
//! they panic. Run one by name: `cargo test -p lb-tests fixtures::` or
//! `cargo test -p lb-tests -- --exact api::pools_are_listed_and_paginated`.
//!
//! The binaries under test come from `cargo xtask test` (`LB_AGENT_BIN`, `LB_LBCTL_BIN`,
//! `LB_EBPF_OBJ`); plain cargo falls back to the default build outputs (`lb_testbed::built`: `agent_bin`, `lbctl_bin`, `ebpf_object`).
//!
//! - `fixtures`, `icmp_fixtures`, `next_hop`, `steering_fixtures`: packet fixtures through
//!   `BPF_PROG_TEST_RUN` (`lb_testbed::fixture`).
//! - `e2e`, `icmp_e2e`, `conntrack`, `health`, `steering`, `udp_e2e`: the real agent in
//!   network namespace topologies, real clients and servers.
//! - `nat64_e2e`: NAT64 end to end (IPv6 clients, IPv4 origins): split, 10 MB, path MTU, UDP.
//! - `nat64_fixtures`: NAT64 (IPv6 VIP, IPv4 origins) packet fixtures, both directions.
//! - `ipv6_bed`: the test bed's IPv6 topology (addresses, routes, servers, clients).
//! - `v6_e2e`: the real agent over IPv6 (VIP, origins, clients): split, transfers,
//!   failover, geo by IPv6 prefix, UDP, path MTU with ICMPv6, ping.
//! - `api`: the HTTP API, `/metrics`, webhooks, the dashboard in headless Chromium, `lbctl`.

mod api;
mod conntrack;
mod e2e;
mod fixtures;
mod health;
mod icmp_e2e;
mod icmp_fixtures;
mod ipv6_bed;
mod nat64_e2e;
mod nat64_fixtures;
mod next_hop;
mod steering;
mod steering_fixtures;
mod udp_e2e;
mod udp_fixtures;
mod v6_e2e;
mod v6_fixtures;
