//! Packet rate: an AF_PACKET generator (sendmmsg, qdisc bypass) in the client namespace sends
//! the frame of an established flow into the LB's veth, where native XDP forwards it to the
//! origin's veth (whose XDP drops it, so the origin's stack does not answer; the client's drops
//! the forwarded SYN-ACK, so its stack does not reset the flow). Counted by the
//! data path's own `fwd_redirect` counter. The floor: the same generator against a bare
//! XDP_TX program on the same veth, counted as frames bounced back to the client.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{Xdp, XdpMode};
use lb_agent::{
    config::Config,
    dataplane::{self, Dataplane},
    health::HealthTable,
    reconcile::Reconciler,
};
use lb_common::event;
use lb_testbed::{origin_addr, tcp_flags, tcp_segment, NetNs, Topology};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rate {
    pub case: String,
    /// Frames the generator handed to the kernel per second (millions).
    pub sent_mpps: f64,
    /// Frames the XDP program forwarded (or bounced) per second (millions).
    pub out_mpps: f64,
    /// `out_mpps` of the bare XDP_TX floor in the same run.
    pub floor_mpps: f64,
    pub ratio_to_floor: f64,
    /// Mean run time of `lb_xdp` per frame under this live traffic (kernel BPF stats).
    pub live_ns_per_packet: f64,
    /// The same for the bare XDP_TX floor.
    pub floor_live_ns_per_packet: f64,
}

/// (runs, run time ns) of a loaded program, from the kernel's BPF statistics.
fn prog_stats(info: &aya::programs::ProgramInfo) -> (u64, u64) {
    #[expect(clippy::cast_possible_truncation, reason = "nanoseconds fit in u64")]
    let ns = info.run_time().as_nanos() as u64;
    (info.run_count(), ns)
}

#[expect(clippy::cast_precision_loss, reason = "statistics")]
fn per_run(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.1 - before.1) as f64 / ((after.0 - before.0).max(1)) as f64
}

/// Sends `frame` out of `ifname` as fast as one thread can for `secs`; returns frames sent.
fn generate(ns: &NetNs, ifname: &str, frame: &[u8], secs: f64) -> Result<u64> {
    ns.run(|| -> Result<u64> {
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        anyhow::ensure!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: raw is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {ifname}");
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = i32::try_from(ifindex)?;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        anyhow::ensure!(
            rc == 0,
            "bind AF_PACKET: {}",
            std::io::Error::last_os_error()
        );
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with an int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                4,
            );
        }
        const BATCH: usize = 64;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        // SAFETY: zeroed mmsghdr is valid; each points at the one iovec.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // SAFETY: msgs holds BATCH valid headers.
            let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
        }
        Ok(sent)
    })
}

/// Attaches `name` from the test-only object next to `object` to `ifname` in `ns` (not
/// pinned: it goes with the returned handle).
fn attach_aux(ns: &NetNs, object: &Path, name: &str, ifname: &str) -> Result<aya::Ebpf> {
    let test_object = lb_agent::dataplane::test_object(object);
    ns.run(|| -> Result<aya::Ebpf> {
        let mut ebpf = aya::Ebpf::load_file(&test_object)
            .with_context(|| format!("{}", test_object.display()))?;
        let p: &mut Xdp = ebpf.program_mut(name).context("program")?.try_into()?;
        p.load()?;
        p.attach(ifname, XdpMode::Driver)?;
        Ok(ebpf)
    })
}

pub fn rates(object: &Path, secs: u32) -> Result<Vec<Rate>> {
    let secs = f64::from(secs);
    // Run counts and times per program while this lives (kernel.bpf_stats_enabled).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let topo = Topology::build(1);
    let (client_if, lb_client_if) = (format!("{}cx", topo.id), topo.lb_ifaces[0].clone());
    let origin_if = format!("{}1x", topo.id);
    let o = origin_addr(1);
    let mut cfg = topo.base_config("");
    cfg.push_str(&format!(
        "[[pools]]\nname = \"web\"\norigins = [{{ name = \"o1\", address = \"{o}\", port = 8080 }}]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n"
    ));
    let cfg = Config::parse(&cfg, Path::new("rate.toml"))?;
    // The sink drops ARP too, so the LB gets the origin's MAC as a static entry.
    let origin_mac = mac(&topo.origins[0], &origin_if);
    let m = origin_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    topo.lb.ip(&[
        "neigh",
        "replace",
        &o.to_string(),
        "lladdr",
        &m,
        "dev",
        &topo.lb_ifaces[1],
        "nud",
        "permanent",
    ]);
    let _sink = attach_aux(&topo.origins[0], object, "xdp_drop", &origin_if)?;
    // The client's stack never sees the SYN-ACK either: it would reset the connection it
    // did not open (the generator is a raw socket), and the flow would be closed.
    let _client_sink = attach_aux(&topo.client, object, "xdp_drop", &client_if)?;
    let client_mac = mac(&topo.client, &client_if);
    let lb_mac = mac(&topo.lb, &lb_client_if);
    // The client's SYN (seq 1000), then its established ACKs (seq 1001, ack 2000) once the
    // origin's SYN-ACK (seq 1999) went through: an established connection's packets.
    let frame = |syn: bool| {
        let (flags, seq) = if syn {
            (tcp_flags::SYN, (1000, 0))
        } else {
            (tcp_flags::ACK, (1001, 2000))
        };
        tcp_segment(
            client_mac,
            lb_mac,
            crate::CLIENT,
            crate::VIP,
            64,
            (41000, 80),
            flags,
            seq,
            &[],
        )
    };

    // Our program on every LB interface, as the agent runs it.
    let (sent, forwarded, live) = {
        let (mut dp, rec) = topo.lb.run(|| -> Result<(Dataplane, Reconciler)> {
            let mut dp = Dataplane::load(object, &topo.pin_dir, cfg.dataplane.flow_table_size)?;
            let mut rec = Reconciler::adopt(dp.take_maps()?)?;
            rec.apply(&cfg, &HealthTable::default())?;
            dp.attach(
                &cfg.dataplane.interfaces,
                cfg.dataplane.xdp_mode,
                &mut rec.maps.tx_ports,
            )?;
            Ok((dp, rec))
        })?;
        generate(&topo.client, &client_if, &frame(true), 0.05)?; // the SYN creates the flow
        let key = lb_common::FlowKey::tcp_v4(crate::CLIENT, 41000, crate::VIP, 80);
        let flow = rec
            .maps
            .flows
            .get(&key, 0)
            .context("the SYN made no flow")?;
        let synack = tcp_segment(
            origin_mac,
            mac(&topo.lb, &topo.lb_ifaces[1]),
            o.octets(),
            <[u8; 4]>::try_from(&flow.snat_addr[12..16])?,
            64,
            (8080, u16::from_be(flow.snat_port)),
            tcp_flags::SYN | tcp_flags::ACK,
            (1999, 1001),
            &[],
        );
        generate(&topo.origins[0], &origin_if, &synack, 0.05)?;
        generate(&topo.client, &client_if, &frame(false), 0.05)?;
        let rkey = flow.rev_key();
        let rev = rec
            .maps
            .rev_flows
            .get(&rkey, 0)
            .context("no reverse entry")?;

        anyhow::ensure!(
            rev.flags & (lb_common::CT_ESTABLISHED | lb_common::CT_RST)
                == lb_common::CT_ESTABLISHED,
            "rate bench: the flow is not established and open after its handshake (flags {:#x})",
            rev.flags
        );
        let before = rec.maps.event_totals()?[event::FWD_REDIRECT as usize];
        let s0 = prog_stats(&dp.program()?.info()?);
        let sent = generate(&topo.client, &client_if, &frame(false), secs)?;
        std::thread::sleep(Duration::from_millis(100));
        let s1 = prog_stats(&dp.program()?.info()?);
        let totals = rec.maps.event_totals()?;
        if std::env::var_os("LB_BENCH_DEBUG").is_some() {
            for (n, v) in event::NAMES.iter().zip(&totals) {
                eprintln!("  event {n} = {v}");
            }
        }
        drop(rec);
        drop(dp);
        dataplane::teardown(&topo.pin_dir)?;
        (
            sent,
            totals[event::FWD_REDIRECT as usize] - before,
            per_run(s0, s1),
        )
    };

    // Floor: bare XDP_TX on the same veth, counted by the kernel's run statistics.
    let floor = {
        let tx = attach_aux(&topo.lb, object, "xdp_tx_floor", &lb_client_if)?;
        let info = || -> Result<(u64, u64)> {
            Ok(prog_stats(
                &tx.program("xdp_tx_floor")
                    .context("floor program")?
                    .info()?,
            ))
        };
        let s0 = info()?;
        generate(&topo.client, &client_if, &frame(false), secs)?;
        std::thread::sleep(Duration::from_millis(100));
        let s1 = info()?;
        (s1.0 - s0.0, per_run(s0, s1))
    };
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let mpps = |n: u64| n as f64 / secs / 1e6;
    Ok(vec![Rate {
        case: "established flow, one generator thread".into(),
        sent_mpps: mpps(sent),
        out_mpps: mpps(forwarded),
        floor_mpps: mpps(floor.0),
        ratio_to_floor: mpps(forwarded) / mpps(floor.0).max(1e-9),
        live_ns_per_packet: live,
        floor_live_ns_per_packet: floor.1,
    }])
}

fn mac(ns: &NetNs, ifname: &str) -> [u8; 6] {
    ns.link(ifname).1
}
