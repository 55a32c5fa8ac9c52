//! NAT64 frames for the fuzzer: IPv6 clients of load balancers on the IPv6 VIP whose pools
//! hold IPv4 origins (`www64`, TCP 8064 -> pool `web`; `dns64`, UDP 5364 -> pool `dns`).
//! The generator sends the clients' IPv6 segments and datagrams, the origins' IPv4 answers
//! to the IPv4 SNAT address, forged ones (another SNAT port, origin or port), new flows,
//! ICMPv4 errors from the origin side about what the load balancer sent in IPv4, and
//! ICMPv6 errors from the client side about what it sent in IPv6; each then mutated by the
//! mutator of its family. The translation check (`check_translated`): a frame that changed
//! family is the flow's tuple as the tables name it, its TTL/hop limit one less, its
//! transport bytes unchanged but for ports and checksum, its checksum verifying exactly
//! when the input's did, IPv4's DF set exactly above 1260 bytes; translated ICMP errors have
//! valid checksums and quote the reverse of their own addresses.

use lb_common::{event, v4_mapped, FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use lb_testbed::{
    fixture::{mac_of, O1, O2, R_ORIGIN, SNAT},
    Side,
};

use crate::{
    frame::{self, UdpSum, ACK, FIN, IP, PSH, RST, SYN},
    v6::{self, build, icmp_l4, mac6, tcp_l4, udp_l4, Known6, CLIENTS6, ICMPV6, IP6, VIP6},
};

/// The NAT64 load balancers' ports on `VIP6`, and their origins' (pools `web` and `dns`).
pub const TCP_PORT: u16 = 8064;
pub const UDP_PORT: u16 = 5364;
/// The IPv4 origins of pools `web` (8080, 8081) and `dns` (5353).
const ORIGINS4: [[u8; 4]; 2] = [O1, O2];

pub const CONFIG: &str = r#"
[[load_balancers]]
name = "www64"
address = "2001:db8:a::10"
port = 8064
default_pools = ["web"]

[[load_balancers]]
name = "dns64"
protocol = "udp"
address = "2001:db8:a::10"
port = 5364
default_pools = ["dns"]
"#;

/// The IPv4 address of an IPv4-mapped one.
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

impl crate::Fuzzer<'_> {
    /// An IPv4 frame from the origin of known NAT64 flow `k` to the SNAT address.
    fn origin_frame64(&self, k: &Known6, flags: u8, payload: &[u8]) -> Vec<u8> {
        let o = v4(&k.origin);
        if k.proto == IPPROTO_TCP {
            let v = lb_testbed::tcp_segment(
                mac_of(o),
                self.lb_mac(Side::B),
                o,
                SNAT,
                64,
                (k.oport, k.snat_port),
                flags,
                (k.oseq, k.cseq),
                payload,
            );
            with_df(v)
        } else {
            with_df(lb_testbed::fixture::udp_frame(
                mac_of(o),
                self.lb_mac(Side::B),
                (o, SNAT),
                (k.oport, k.snat_port),
                payload,
            ))
        }
    }

    /// An IPv6 frame from the client of known NAT64 flow `k` to the VIP.
    fn client_frame64(&self, k: &Known6, flags: u8, payload: &[u8]) -> Vec<u8> {
        let l4 = if k.proto == IPPROTO_TCP {
            tcp_l4((k.cport, k.vport), k.cseq, k.oseq, flags, payload)
        } else {
            udp_l4((k.cport, k.vport), payload)
        };
        build(
            (mac6(k.client), self.lb_mac(Side::A)),
            (k.client, VIP6),
            64,
            k.proto,
            l4,
            &[],
        )
    }

    /// Runs a new NAT64 flow's first packet and learns the flow from its IPv4 rewrite.
    fn first64(
        &mut self,
        f: &[u8],
        what: &str,
        proto: u8,
        client: [u8; 16],
        cport: u16,
        vport: u16,
    ) -> Option<Known6> {
        let (v, out) = self.step(f, Side::A, what)?;
        if !(v == crate::XDP_TX || v == crate::XDP_REDIRECT)
            || out.len() < IP + 24
            || out[12..14] != [8, 0]
        {
            return None;
        }
        let (src, dst) = (&out[IP + 12..IP + 16], &out[IP + 16..IP + 20]);
        if src != SNAT || !ORIGINS4.iter().any(|o| o == dst) {
            return None;
        }
        let l4 = IP + 20;
        Some(Known6 {
            proto,
            client,
            cport,
            vport,
            origin: v4_mapped([dst[0], dst[1], dst[2], dst[3]]),
            oport: u16::from_be_bytes([out[l4 + 2], out[l4 + 3]]),
            snat_port: u16::from_be_bytes([out[l4], out[l4 + 1]]),
            cseq: 0,
            oseq: 0,
        })
    }

    /// A clean NAT64 handshake to `stage` (0 SYN, 1 SYN-ACK, 2 established, 3 closed by FINs,
    /// 4 reset by the client), or a first datagram and (if `stage` is odd) its answer.
    pub(crate) fn open64(&mut self, client: [u8; 16], cport: u16, proto: u8, stage: u32) {
        let isn = self.rng.u32();
        let vport = if proto == IPPROTO_TCP {
            TCP_PORT
        } else {
            UDP_PORT
        };
        let first = Known6 {
            proto,
            client,
            cport,
            vport,
            origin: [0; 16],
            oport: 0,
            snat_port: 0,
            cseq: isn,
            oseq: 0,
        };
        let f = if proto == IPPROTO_TCP {
            self.client_frame64(&first, SYN, &[])
        } else {
            self.client_frame64(&first, 0, b"query")
        };
        let Some(mut k) = self.first64(&f, "NAT64 set-up", proto, client, cport, vport) else {
            return;
        };
        k.cseq = isn.wrapping_add(1);
        k.oseq = self.rng.u32();
        if proto == IPPROTO_UDP {
            if stage % 2 == 1 {
                let a = self.origin_frame64(&k, 0, b"answer");
                self.step(&a, Side::B, "NAT64 set-up answer");
            }
        } else {
            if stage >= 1 {
                let f = self.origin_frame64(&k, SYN | ACK, &[]);
                self.step(&f, Side::B, "NAT64 set-up SYN-ACK");
                k.oseq = k.oseq.wrapping_add(1);
            }
            if stage >= 2 {
                let f = self.client_frame64(&k, ACK, &[]);
                self.step(&f, Side::A, "NAT64 set-up ACK");
            }
            match stage {
                3 => {
                    let f = self.client_frame64(&k, FIN | ACK, &[]);
                    self.step(&f, Side::A, "NAT64 set-up FIN");
                    k.cseq = k.cseq.wrapping_add(1);
                    let f = self.origin_frame64(&k, FIN | ACK, &[]);
                    self.step(&f, Side::B, "NAT64 set-up FIN");
                    k.oseq = k.oseq.wrapping_add(1);
                }
                4 => {
                    let f = self.client_frame64(&k, RST, &[]);
                    self.step(&f, Side::A, "NAT64 set-up RST");
                }
                _ => {}
            }
        }
        if self.known64.len() >= 64 {
            self.known64.swap_remove(0);
        }
        self.known64.push(k);
    }

    fn pick_known64(&mut self) -> Option<Known6> {
        (!self.known64.is_empty()).then(|| self.known64[self.rng.below(self.known64.len())].clone())
    }

    /// A NAT64 frame (see the module docs), mutated half of the time.
    pub(crate) fn generate64(&mut self) -> (Vec<u8>, Side, String) {
        let r = self.rng.below(100);
        let known = self.pick_known64();
        let (mut f, side, mut what) = match (r, known) {
            (0..=29, Some(k)) => {
                let flags = self.rng.pick(&[
                    ACK,
                    ACK,
                    ACK | PSH,
                    FIN | ACK,
                    RST,
                    RST | ACK,
                    SYN,
                    SYN | ACK,
                ]);
                let n = self.rng.pick(&[0, 0, 1, 100, 1232, 1300, 1400]);
                let payload = self.rng.bytes(n);
                let mut k2 = k.clone();
                if self.rng.chance(30) {
                    k2.cseq = k2
                        .cseq
                        .wrapping_add(self.rng.u32() % 131_072)
                        .wrapping_sub(65536);
                }
                let f = self.client_frame64(&k2, flags, &payload);
                (
                    f,
                    Side::A,
                    format!(
                        "NAT64 client {} (flags {flags:#04x}, {n} bytes) of a known flow",
                        proto_name(k.proto)
                    ),
                )
            }
            (30..=59, Some(k)) => {
                let flags = self
                    .rng
                    .pick(&[ACK, ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK]);
                let n = self.rng.pick(&[0, 0, 1, 100, 1200, 1440, 1460]);
                let payload = self.rng.bytes(n);
                let mut k2 = k.clone();
                let how = match self.rng.below(6) {
                    0 => {
                        k2.snat_port = k2.snat_port.wrapping_add(1 + self.rng.u16() % 20);
                        ", another SNAT port"
                    }
                    1 => {
                        k2.oport = k2.oport.wrapping_add(1);
                        ", another origin port"
                    }
                    _ => "",
                };
                let mut f = self.origin_frame64(&k2, flags, &payload);
                if self.rng.chance(10) {
                    f[IP + 6] &= !0x40; // without DF
                    fix_ip_sum(&mut f);
                }
                if k.proto == IPPROTO_UDP && self.rng.chance(10) {
                    f[IP + 26..IP + 28].copy_from_slice(&[0, 0]); // no UDP checksum
                }
                (
                    f,
                    Side::B,
                    format!(
                        "NAT64 origin {} (flags {flags:#04x}, {n} bytes){how}",
                        proto_name(k.proto)
                    ),
                )
            }
            (60..=74, Some(k)) => self.icmp4_about64(&k),
            (75..=87, Some(k)) => self.icmp6_about64(&k),
            _ => {
                let c = if self.rng.chance(80) {
                    self.rng.pick(&CLIENTS6)
                } else {
                    let mut a = v6::v6(1, 0);
                    a[8..].copy_from_slice(&self.rng.bytes(8));
                    a
                };
                let cport = self.fresh_cport();
                let proto = self.rng.pick(&[IPPROTO_TCP, IPPROTO_UDP]);
                let k = Known6 {
                    proto,
                    client: c,
                    cport,
                    vport: if proto == IPPROTO_TCP {
                        TCP_PORT
                    } else {
                        UDP_PORT
                    },
                    origin: [0; 16],
                    oport: 0,
                    snat_port: 0,
                    cseq: self.rng.u32(),
                    oseq: 0,
                };
                let f = self.client_frame64(&k, SYN, b"");
                (f, Side::A, format!("NAT64 new {} flow", proto_name(proto)))
            }
        };
        if self.rng.chance(50) {
            let m = if f[12..14] == [0x86, 0xdd] {
                v6::mutate(&mut self.rng, &mut f)
            } else {
                frame::mutate(&mut self.rng, &mut f, &[SNAT, O1, O2])
            };
            what = format!("{what}; mutated: {m}");
        }
        (f, side, what)
    }

    /// An ICMPv4 error from the origin side to the SNAT address, quoting the IPv4 packet
    /// the load balancer sent to the origin of `k` (28 bytes, or all of a datagram).
    fn icmp4_about64(&mut self, k: &Known6) -> (Vec<u8>, Side, String) {
        let (kind, code) = self.rng.pick(&[
            (3u8, 4u8),
            (3, 4),
            (3, 3),
            (3, 1),
            (3, 13),
            (3, 14),
            (3, 2),
            (11, 0),
            (12, 0),
        ]);
        let mtu: u16 = self.rng.pick(&[0, 576, 1280, 1400]);
        let o = v4(&k.origin);
        let sent = if k.proto == IPPROTO_TCP {
            lb_testbed::tcp_segment(
                mac_of(SNAT),
                mac_of(o),
                SNAT,
                o,
                63,
                (k.snat_port, k.oport),
                ACK,
                (k.cseq, k.oseq),
                b"quoted",
            )
        } else {
            lb_testbed::fixture::udp_frame_ttl(
                mac_of(SNAT),
                mac_of(o),
                (SNAT, o),
                63,
                (k.snat_port, k.oport),
                b"quoted",
            )
        };
        let quote = if self.rng.chance(50) {
            &sent[IP..IP + 28]
        } else {
            &sent[IP..]
        };
        let m = mtu.to_be_bytes();
        let f = lb_testbed::fixture::icmp_frame(
            mac_of(R_ORIGIN),
            self.lb_mac(Side::B),
            R_ORIGIN,
            SNAT,
            64,
            kind,
            code,
            [0, 0, m[0], m[1]],
            quote,
        );
        (
            f,
            Side::B,
            format!(
                "NAT64 ICMP {kind}/{code} from the origin side about a {} flow",
                proto_name(k.proto)
            ),
        )
    }

    /// An ICMPv6 error from the client side to the VIP, quoting the IPv6 packet the load
    /// balancer sent to the client of `k`.
    fn icmp6_about64(&mut self, k: &Known6) -> (Vec<u8>, Side, String) {
        let (kind, code) = self.rng.pick(&[
            (1u8, 4u8),
            (1, 1),
            (1, 0),
            (1, 6),
            (2, 0),
            (2, 0),
            (3, 0),
            (4, 1),
            (4, 0),
        ]);
        let rest = if kind == 2 {
            self.rng.pick(&[1280u32, 1400, 1500, 70_000]).to_be_bytes()
        } else {
            [0; 4]
        };
        let l4 = if k.proto == IPPROTO_TCP {
            tcp_l4((k.vport, k.cport), k.oseq, k.cseq, ACK, b"quoted")
        } else {
            udp_l4((k.vport, k.cport), b"quoted")
        };
        let sent = build(
            (mac6(VIP6), mac6(k.client)),
            (VIP6, k.client),
            63,
            k.proto,
            l4,
            &[],
        );
        let quote = if self.rng.chance(50) {
            &sent[IP6..IP6 + 48]
        } else {
            &sent[IP6..]
        };
        let router = CLIENTS6[2];
        let f = build(
            (mac6(router), self.lb_mac(Side::A)),
            (router, VIP6),
            64,
            ICMPV6,
            icmp_l4(kind, code, rest, quote),
            &[],
        );
        (
            f,
            Side::A,
            format!(
                "NAT64 ICMPv6 {kind}/{code} from the client side about a {} flow",
                proto_name(k.proto)
            ),
        )
    }

    /// What is wrong with `out` as the translation of `input` into the other family
    /// (`None`: nothing).
    pub(crate) fn check_translated(&mut self, input: &[u8], out: &[u8], ev: u32) -> Option<String> {
        let to_v4 = out.get(12..14) == Some(&[8, 0]);
        if to_v4 {
            let Some(after) = frame::verify(out) else {
                return Some("translated output is not IPv4".into());
            };
            if !after.ip {
                return Some("translated IPv4 header checksum".into());
            }
            let pi = v6::parse_lenient(input)?;
            let input_ok = v6::l4_sum(input, &pi) == Some(v6::Sum::Good);
            // A payload length that disagrees with the frame is carried into the IPv4 total
            // length (as the IPv6 and IPv4 paths forward such lies): the checksums are then
            // over other bytes on each side, and not compared.
            let lies = v6::length_lies(input);
            if lies {
                self.report.forwarded_bad_length += 1;
            }
            if out[IP + 9] == 1 {
                // An ICMPv6 error became ICMPv4: valid checksums, and a quote from the
                // origin to the SNAT address (the reverse of the error's addresses).
                if input_ok {
                    if let Some(p) = frame::icmp_problem(out) {
                        return Some(format!("translated ICMP: {p}"));
                    }
                }
                // The quoted UDP checksum is translated: with the input's quoted payload, it
                // verifies in the output's quote exactly when it did in the input's.
                if let Some((a, b)) = quote_sums_6to4(input, pi.l4, out) {
                    if (a == v6::Sum::Good) != (b == Some(UdpSum::Good)) {
                        return Some(format!("quoted UDP checksum before: {a:?}, after: {b:?}"));
                    }
                }
                let q = IP + 28;
                if out.len() < q + 20
                    || out[q + 12..q + 16] != out[IP + 16..IP + 20]
                    || out[q + 16..q + 20] != out[IP + 12..IP + 16]
                {
                    return Some(
                        "the quoted IPv4 header is not the reverse of the error's addresses".into(),
                    );
                }
                return None;
            }
            let tot = usize::from(u16::from_be_bytes([out[IP + 2], out[IP + 3]]));
            let df = out[IP + 6] & 0x40 != 0;
            if df != (tot > 1260) || out[IP + 6] & 0x3f != 0 || out[IP + 7] != 0 {
                return Some(format!(
                    "IPv4 flags {:02x}{:02x} for {tot} bytes (DF above 1260 only)",
                    out[IP + 6],
                    out[IP + 7]
                ));
            }
            // The payload length as sent (it may lie), less the extension headers removed.
            let plen = usize::from(u16::from_be_bytes([input[IP6 + 4], input[IP6 + 5]]));
            if tot + pi.ext_len != plen + 20 {
                return Some(format!("IPv4 length {tot} for an IPv6 payload length of {plen} ({} of extension headers)", pi.ext_len));
            }
            if out[IP + 8].wrapping_add(1) != input[IP6 + 7] {
                return Some(format!(
                    "hop limit {} -> TTL {}",
                    input[IP6 + 7],
                    out[IP + 8]
                ));
            }
            let src = [out[IP + 12], out[IP + 13], out[IP + 14], out[IP + 15]];
            if src != SNAT {
                return Some(
                    "translated to IPv4 from another address than the SNAT address".into(),
                );
            }
            let (li, lo) = (&input[pi.l4..], &out[IP + 20..]);
            let sum_at = if pi.proto == IPPROTO_UDP { 6 } else { 16 };
            if li.len() < sum_at + 2
                || lo.len() < sum_at + 2
                || (li.len() != lo.len() && !(pi.proto == IPPROTO_TCP && lo[13] & SYN != 0))
            {
                return Some(format!("transport bytes {} -> {}", li.len(), lo.len()));
            }
            let after_ok = if pi.proto == IPPROTO_UDP {
                after.udp == Some(UdpSum::Good)
            } else {
                after.tcp == Some(true)
            };
            let syn = |b: &[u8]| pi.proto == IPPROTO_TCP && b[13] & SYN != 0;
            if syn(lo) && !syn(li) {
                // The SYN a cookie ACK becomes, built in place: full checksums.
                if !after_ok {
                    return Some("the SYN built for a cookie flow has a bad checksum".into());
                }
            } else {
                // SYN-cookie flows shift the acknowledgement number (bytes 8-11).
                let shifted = |i: usize| pi.proto == IPPROTO_TCP && (8..12).contains(&i);
                if let Some(i) = (4..li.len())
                    .find(|&i| li[i] != lo[i] && !(sum_at..sum_at + 2).contains(&i) && !shifted(i))
                {
                    return Some(format!(
                        "transport byte {i} changed ({:02x} -> {:02x})",
                        li[i], lo[i]
                    ));
                }
                if after_ok != input_ok && !lies {
                    return Some(format!(
                        "checksum verified before: {input_ok}, after: {after_ok}"
                    ));
                }
            }
            let port = |at: usize| u16::from_be_bytes([lo[at], lo[at + 1]]).to_be();
            let rk = FlowKey {
                src: v4_mapped([out[IP + 16], out[IP + 17], out[IP + 18], out[IP + 19]]),
                dst: v4_mapped(SNAT),
                sport: port(2),
                dport: port(0),
                proto: pi.proto,
                _pad: [0; 3],
            };
            let Ok(r) = self.rec.maps.rev_flows.get(&rk, 0) else {
                return Some("translated to an origin without a REV_FLOWS entry".into());
            };
            let iport = |at: usize| u16::from_be_bytes([li[at], li[at + 1]]).to_be();
            if r.client_addr != pi.src
                || r.vip_addr != pi.dst
                || r.client_port != iport(0)
                || r.vip_port != iport(2)
            {
                return Some(
                    "translated to an origin whose REV_FLOWS entry names another client tuple"
                        .into(),
                );
            }
            return None;
        }
        // IPv4 in, IPv6 out.
        let Some(po) = v6::parse_lenient(out) else {
            return Some("translated output is not IPv6".into());
        };
        let before = frame::verify(input)?;
        if po.proto == ICMPV6 {
            if frame::icmp_problem(input).is_none() && v6::l4_sum(out, &po) != Some(v6::Sum::Good) {
                return Some("translated ICMPv6 checksum".into());
            }
            if let Some((a, b)) = quote_sums_4to6(input, out, po.l4) {
                if (a == UdpSum::Good) != (b == Some(v6::Sum::Good)) {
                    return Some(format!("quoted UDP checksum before: {a:?}, after: {b:?}"));
                }
            }
            let q = po.l4 + 8;
            if out.len() < q + 40
                || out[q] >> 4 != 6
                || out[q + 8..q + 24] != po.dst
                || out[q + 24..q + 40] != po.src
            {
                return Some(
                    "the quoted IPv6 header is not the reverse of the error's addresses".into(),
                );
            }
            return None;
        }
        // Forwarded, or handed to the stack to resolve the client's neighbour.
        if ev != event::FWD_REDIRECT && ev != event::FWD_TX && ev != event::PASS_NO_NEIGH {
            return Some(format!(
                "translated to IPv6 with event {}",
                event::NAMES[ev as usize]
            ));
        }
        if po.src != VIP6 {
            return Some("translated to IPv6 from another address than the VIP".into());
        }
        if out[IP6 + 7].wrapping_add(1) != input[IP + 8] {
            return Some(format!(
                "TTL {} -> hop limit {}",
                input[IP + 8],
                out[IP6 + 7]
            ));
        }
        let tot = usize::from(u16::from_be_bytes([input[IP + 2], input[IP + 3]]));
        let plen = usize::from(u16::from_be_bytes([out[IP6 + 4], out[IP6 + 5]]));
        if plen + 20 != tot {
            return Some(format!(
                "IPv6 payload length {plen} for an IPv4 length {tot}"
            ));
        }
        let (li, lo) = (&input[IP + 20..], &out[po.l4..]);
        let sum_at = if po.proto == IPPROTO_UDP { 6 } else { 16 };
        if li.len() != lo.len() || li.len() < sum_at + 2 {
            return Some(format!("transport bytes {} -> {}", li.len(), lo.len()));
        }
        if let Some(i) = (4..li.len()).find(|&i| {
            li[i] != lo[i]
                && !(sum_at..sum_at + 2).contains(&i)
                && !(po.proto == IPPROTO_TCP && (4..8).contains(&i))
        }) {
            return Some(format!(
                "transport byte {i} changed ({:02x} -> {:02x})",
                li[i], lo[i]
            ));
        }
        let input_ok = if po.proto == IPPROTO_UDP {
            before.udp == Some(UdpSum::Good)
        } else {
            before.tcp == Some(true)
        };
        let after_ok = v6::l4_sum(out, &po) == Some(v6::Sum::Good);
        // A total length that disagrees with the frame (a lie, or Ethernet padding) is
        // carried into the payload length: the checksums are then over other bytes.
        let lies = tot + IP != input.len();
        if lies {
            self.report.forwarded_bad_length += 1;
        }
        if input_ok != after_ok && !lies {
            return Some(format!(
                "checksum verified before: {input_ok}, after: {after_ok}"
            ));
        }
        let port = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]).to_be();
        let k = FlowKey {
            src: po.dst,
            dst: VIP6,
            sport: port(lo, 2),
            dport: port(lo, 0),
            proto: po.proto,
            _pad: [0; 3],
        };
        let Ok(fl) = self.rec.maps.flows.get(&k, 0) else {
            return Some("translated to a client without a FLOWS entry".into());
        };
        let src4 = [
            input[IP + 12],
            input[IP + 13],
            input[IP + 14],
            input[IP + 15],
        ];
        if fl.origin_addr != v4_mapped(src4)
            || fl.origin_port != port(li, 0)
            || fl.snat_port != port(li, 2)
        {
            return Some(
                "translated to a client whose FLOWS entry names another origin tuple".into(),
            );
        }
        None
    }
}

fn proto_name(p: u8) -> &'static str {
    if p == IPPROTO_TCP {
        "TCP"
    } else {
        "UDP"
    }
}

/// Sets DF (as Linux origins do) and fixes the IPv4 header checksum.
fn with_df(mut v: Vec<u8>) -> Vec<u8> {
    v[IP + 6] |= 0x40;
    fix_ip_sum(&mut v);
    v
}

fn fix_ip_sum(v: &mut [u8]) {
    v[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let c = lb_testbed::fixture::csum(&v[IP..IP + 20]);
    v[IP + 10..IP + 12].copy_from_slice(&c);
}

/// The quoted UDP checksum of an ICMPv6 error `input` (upper layer at `l4`) that quotes a
/// whole datagram, and of its ICMP translation `out` (8 bytes of UDP quoted) checked with
/// the input's quoted payload: `None` when the input does not quote a whole datagram.
fn quote_sums_6to4(input: &[u8], l4: usize, out: &[u8]) -> Option<(v6::Sum, Option<UdpSum>)> {
    let q = input.get(l4 + 8..)?;
    if q.len() < 48 || q[0] >> 4 != 6 || q[6] != IPPROTO_UDP {
        return None;
    }
    let mut fake = vec![0u8; 12];
    fake.extend_from_slice(&[0x86, 0xdd]);
    fake.extend_from_slice(q);
    let p = v6::parse(&fake)?;
    let before = v6::l4_sum(&fake, &p)?;
    let payload = fake.get(p.l4 + 8..p.l4 + p.l4_len)?;
    if usize::from(u16::from_be_bytes([fake[p.l4 + 4], fake[p.l4 + 5]])) != p.l4_len {
        return None;
    }
    // The output's outer IPv4 and ICMP headers, its quoted IPv4 header and 8 bytes of UDP,
    // then the input's payload; lengths made whole.
    let oq = IP + 28;
    let mut f = out.get(..oq + 28)?.to_vec();
    f.extend_from_slice(payload);
    let qlen = u16::try_from(28 + payload.len()).ok()?;
    f[oq + 2..oq + 4].copy_from_slice(&qlen.to_be_bytes());
    f[oq + 24..oq + 26].copy_from_slice(&(qlen - 20).to_be_bytes());
    let tot = u16::try_from(f.len() - IP).ok()?;
    f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
    Some((before, frame::quoted_udp(&f)))
}

/// `quote_sums_6to4` the other way: an ICMP error `input` quoting a whole datagram, and its
/// ICMPv6 translation `out` (upper layer at `l4`).
fn quote_sums_4to6(input: &[u8], out: &[u8], l4: usize) -> Option<(UdpSum, Option<v6::Sum>)> {
    let before = frame::quoted_udp(input)?;
    let iq = IP + 28;
    let qtot = usize::from(u16::from_be_bytes([input[iq + 2], input[iq + 3]]));
    let payload = input.get(iq + 28..iq + qtot)?;
    // A UDP length that disagrees with the quoted IPv4 length makes the two sums cover
    // different bytes: not compared.
    if usize::from(u16::from_be_bytes([input[iq + 24], input[iq + 25]])) + 20 != qtot {
        return None;
    }
    let oq = l4 + 8;
    let mut fake = vec![0u8; 12];
    fake.extend_from_slice(&[0x86, 0xdd]);
    fake.extend_from_slice(out.get(oq..oq + 48)?);
    fake.extend_from_slice(payload);
    let ulen = u16::try_from(8 + payload.len()).ok()?;
    fake[IP6 + 4..IP6 + 6].copy_from_slice(&ulen.to_be_bytes());
    fake[IP6 + 44..IP6 + 46].copy_from_slice(&ulen.to_be_bytes());
    let p = v6::parse(&fake)?;
    Some((before, v6::l4_sum(&fake, &p)))
}
