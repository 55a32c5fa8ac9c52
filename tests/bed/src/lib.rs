//! Test bed: network namespaces, veth topologies, origin servers, clients and an agent
//! process guard, shared by the end-to-end tests, `cargo xtask demo` and the benchmarks.
//!
//! Everything it creates has a unique name (process id + counter) and is removed by a guard
//! on drop, also when a test panics. Traffic stays inside the namespaces it creates.
//!
//! Topology (`Topology::build`):
//! ```text
//!  client ns                 lb ns (XDP on every veth)             origin ns i (i = 1..n)
//!  10.0.1.2, .3 ----veth---- 10.0.1.1          10.0.1i.1 ----veth---- 10.0.1i.2 (server :8080)
//!  default via 10.0.1.1      snat 10.0.0.1 (lo), VIP 10.0.0.10     default via 10.0.1i.1
//! ```
//!
//! `Topology::build_with(n, Family::Dual)` adds IPv6 beside (`ip -6 addr add ... nodad`,
//! DAD off in every namespace, IPv6 forwarding on in the LB namespace):
//! ```text
//!  2001:db8:1::2, ::3 ----- 2001:db8:1::1     2001:db8:1i::1 ------- 2001:db8:1i::2
//!  default via 2001:db8:1::1 snat 2001:db8::1 (lo), VIP 2001:db8::10  default via ...1i::1
//! ```

pub mod built;
#[cfg(feature = "dataplane")]
pub mod fixture;
pub mod mmdb;
pub mod prom;

pub use built::{agent_bin, ebpf_object, lbctl_bin};

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const VIP_PORT: u16 = 80;
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const ORIGIN_PORT: u16 = 8080;

/// Address of origin `i` (1-based).
pub fn origin_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 10 + u8::try_from(i).expect("few origins"), 2)
}

/// The IPv6 VIP of a `Family::Dual` topology (`config_dual`).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The LB's IPv6 SNAT address (on its `lo`).
pub const SNAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const CLIENT6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
pub const LB_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

/// IPv6 address of origin `i` (1-based): `2001:db8:1i::2` (the IPv4 third octet, in hex
/// digits: origin 1 is `2001:db8:11::2`).
pub fn origin_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, subnet6(i), 0, 0, 0, 0, 2)
}

/// The IPv6 /64 of `Topology::add_host_behind(.., net, ..)`, as a prefix to append the
/// host part to: `2001:db8:f15::` for `[10, 0, 21]` (third octet in hex, after an `f` that
/// keeps it apart from the origins' subnets).
pub fn host_net6(net: [u8; 3]) -> String {
    format!("2001:db8:f{:02x}::", net[2])
}

/// The third group of origin `i`'s IPv6 subnet (`0x11` for origin 1).
fn subnet6(i: usize) -> u16 {
    let i = u16::try_from(i).expect("few origins");
    (1 + i / 10) << 4 | (i % 10)
}

/// Which address families a test topology has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only: the topology every test had before IPv6 (IPv6 stays as the kernel makes
    /// it: link-local addresses only).
    V4,
    /// IPv4 and IPv6 on every link (the module docs' second picture).
    Dual,
}

/// IPv6 in namespace `ns`, before links are moved in: IPv6 on, DAD off (addresses usable at
/// once; `nodad` on each address covers the ones added later), so neither link-local nor
/// global addresses wait a second as tentative.
pub fn enable_ipv6(ns: &NetNs) {
    for key in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "0");
        ns.sysctl(&format!("net.ipv6.conf.{key}.accept_dad"), "0");
    }
    ns.sysctl("net.ipv6.conf.lo.disable_ipv6", "0");
}

/// Kernel-touching tests run one at a time in a process; hold this while you use the kernel.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A short unique id for names (interfaces allow 15 characters): `<prefix><pid36><n>`.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{}{}",
        radix36(std::process::id() % 1_679_616),
        radix36(n % 36)
    )
}

fn radix36(mut v: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

/// Runs a command, panicking with its output if it fails (test-bed setup must not half-work).
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {cmd}: {e}; install it (cargo xtask setup installs the test prerequisites)"
        )
    });
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with a clear message when a prerequisite of the kernel tests is missing.
pub fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "kernel tests need root (BPF, XDP, netns)"
    );
    for (cmd, pkg) in [
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("nsenter", "util-linux"),
        ("ping", "iputils-ping"),
    ] {
        let ok = Command::new(cmd).arg("-V").output().is_ok()
            || Command::new(cmd).arg("--version").output().is_ok();
        assert!(
            ok,
            "`{cmd}` is missing: apt-get install {pkg} (or run `cargo xtask setup`)"
        );
    }
    assert!(
        Path::new("/sys/fs/bpf").exists(),
        "/sys/fs/bpf is missing: mount bpffs with `mount -t bpf bpf /sys/fs/bpf`"
    );
    if !is_bpffs(Path::new("/sys/fs/bpf")) {
        sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid C string and a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type as i64 == 0xcafe_4a11 }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        sh("ip", &["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Runs a command inside the namespace (network only; the mount namespace, and so
    /// /sys/fs/bpf, stays the host's).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut a = vec![net.as_str(), "--", cmd];
        a.extend_from_slice(args);
        sh("nsenter", &a)
    }

    /// Interface index and MAC address of `dev` in this namespace.
    pub fn link(&self, dev: &str) -> (u32, [u8; 6]) {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        let index: u32 = out
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .expect("ifindex");
        let mac = out
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("mac");
        let mac: Vec<u8> = mac
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).expect("hex"))
            .collect();
        (index, <[u8; 6]>::try_from(mac).expect("6 bytes"))
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live here).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Moves the calling thread into this namespace, for good.
    pub fn enter(&self) {
        enter_netns(&self.path());
    }
}

/// Moves the calling thread into the network namespace at `path`, for good (for a thread
/// that outlives a borrow of its `NetNs`).
pub fn enter_netns(path: &Path) {
    let f = fs::File::open(path).expect("open netns");
    // SAFETY: f is an open namespace file; setns affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns({}): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// TCP flags of a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flags {
    Syn,
    SynAck,
    Ack,
    Fin,
}

/// A TCP/IPv4 frame built by etherparse (checksums computed in full): seq 1000, window
/// 64240; acks 1001 (SYN-ACK) or 2000 (ACK, FIN).
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
pub fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 64240);
    let b = match flags {
        Flags::Syn => b.syn(),
        Flags::SynAck => b.syn().ack(1001),
        Flags::Ack => b.ack(2000),
        Flags::Fin => b.fin().ack(2000),
    };
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("build frame");
    v
}

/// TCP flag bits, for `tcp_segment`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A TCP/IPv4 frame with any flags, sequence and acknowledgement numbers (window 64240;
/// checksums computed in full by etherparse). `ack` is written only with the ACK flag.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
pub fn tcp_segment(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    (sport, dport): (u16, u16),
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let ip = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv4(src, dst, ttl);
    tcp_over(ip, (sport, dport), flags, (seq, ack), payload)
}

/// The TCP part of `tcp_segment` and `tcp6_segment`, over the IP header `ip` built so far.
fn tcp_over(
    ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    (sport, dport): (u16, u16),
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, seq, 64240);
    if flags & tcp_flags::FIN != 0 {
        b = b.fin();
    }
    if flags & tcp_flags::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp_flags::RST != 0 {
        b = b.rst();
    }
    if flags & tcp_flags::PSH != 0 {
        b = b.psh();
    }
    if flags & tcp_flags::ACK != 0 {
        b = b.ack(ack);
    }
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("build frame");
    v
}

/// `tcp_segment` over IPv6 (hop limit `hop_limit`; checksums computed in full by
/// etherparse).
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
pub fn tcp6_segment(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    (sport, dport): (u16, u16),
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let ip = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv6(src, dst, hop_limit);
    tcp_over(ip, (sport, dport), flags, (seq, ack), payload)
}

/// Sends hand-made IPv4/TCP packets (any source address, flags and sequence numbers)
/// through a raw socket of the calling thread's network namespace: the forged packets of
/// attack tests. Open it inside `NetNs::run`.
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
}

impl RawSender {
    pub fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one segment from `src` to `dst` (TTL 64, window 64240).
    pub fn send(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
        (seq, ack): (u32, u32),
        payload: &[u8],
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let frame = tcp_segment(
            [0; 6],
            [0; 6],
            src.ip().octets(),
            dst.ip().octets(),
            64,
            (src.port(), dst.port()),
            flags,
            (seq, ack),
            payload,
        );
        let packet = &frame[14..];
        // SAFETY: an all-zero sockaddr_in is valid; fields set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        // SAFETY: packet and sa outlive the call; sizes passed match.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Which end of a `FibBed`'s veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `a`: 10.0.1.1/24, where clients are.
    A,
    /// `b`: 10.0.11.1/24, where origins are.
    B,
}

/// A namespace whose veth pair has both ends in it, forwarding on, and permanent neighbour
/// entries: `bpf_fib_lookup` inside `BPF_PROG_TEST_RUN` then answers deterministically (for
/// packet fixtures and per-packet benchmarks). Pins under `pin_dir` are removed on drop.
pub struct FibBed {
    pub ns: NetNs,
    pub a: String,
    pub b: String,
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
    pub ifindex_a: u32,
    pub ifindex_b: u32,
    pub pin_dir: PathBuf,
}

/// A permanent neighbour entry (`ip neigh replace ... nud permanent`), either family: the
/// FIB helper then answers lookups towards `addr` deterministically.
fn static_neigh(ns: &NetNs, addr: IpAddr, mac: [u8; 6], dev: &str) {
    let m = mac.map(|b| format!("{b:02x}")).join(":");
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    ns.ip(&[
        family,
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &m,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

impl FibBed {
    pub fn new(prefix: &str, neighbours: &[([u8; 4], [u8; 6], Side)]) -> Self {
        let id = unique_id(prefix);
        let ns = NetNs::new(&id);
        let (a, b) = (format!("{id}a"), format!("{id}b"));
        sh(
            "ip",
            &[
                "link", "add", &a, "netns", &ns.name, "type", "veth", "peer", "name", &b, "netns",
                &ns.name,
            ],
        );
        ns.ip(&["addr", "add", "10.0.1.1/24", "dev", &a]);
        ns.ip(&["addr", "add", "10.0.11.1/24", "dev", &b]);
        ns.ip(&["link", "set", &a, "up"]);
        ns.ip(&["link", "set", &b, "up"]);
        ns.sysctl("net.ipv4.conf.all.forwarding", "1");
        for (addr, mac, side) in neighbours {
            let dev = if *side == Side::A { &a } else { &b };
            static_neigh(&ns, IpAddr::from(*addr), *mac, dev);
        }
        let (ifindex_a, mac_a) = ns.link(&a);
        let (ifindex_b, mac_b) = ns.link(&b);
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&id);
        Self {
            ns,
            a,
            b,
            mac_a,
            mac_b,
            ifindex_a,
            ifindex_b,
            pin_dir,
        }
    }

    /// IPv6 beside the IPv4 addresses: `2001:db8:1::1/64` on `a` (clients),
    /// `2001:db8:11::1/64` on `b` (origins), without DAD, IPv6 forwarding on, and permanent
    /// neighbour entries for `neighbours` (so `bpf_fib_lookup` answers IPv6 lookups
    /// deterministically too).
    pub fn add_ipv6(&self, neighbours: &[([u8; 16], [u8; 6], Side)]) {
        enable_ipv6(&self.ns);
        for dev in [&self.a, &self.b] {
            self.ns
                .sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
        }
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1::1/64",
            "dev",
            &self.a,
            "nodad",
        ]);
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:11::1/64",
            "dev",
            &self.b,
            "nodad",
        ]);
        self.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        for (addr, mac, side) in neighbours {
            let dev = if *side == Side::A { &self.a } else { &self.b };
            static_neigh(&self.ns, IpAddr::from(*addr), *mac, dev);
        }
    }

    pub fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::A => self.ifindex_a,
            Side::B => self.ifindex_b,
        }
    }

    /// The `xdp_md` context for `BPF_PROG_TEST_RUN` of a frame of `len` bytes arriving on `side`.
    pub fn ctx(&self, side: Side, len: usize) -> Vec<u8> {
        let len = u32::try_from(len).expect("frame length");
        [0u32, len, 0, self.ifindex(side), 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }
}

impl Drop for FibBed {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.pin_dir);
    }
}

/// The client / LB / origins topology of the module docs.
#[derive(Debug)]
pub struct Topology {
    pub id: String,
    pub client: NetNs,
    pub lb: NetNs,
    pub origins: Vec<NetNs>,
    /// LB-side interface names: the client-facing one first, then one per origin.
    pub lb_ifaces: Vec<String>,
    pub pin_dir: PathBuf,
    /// The agent's status file for this topology (removed on drop).
    pub status_file: PathBuf,
    /// The agent's API state file for this topology (removed on drop).
    pub state_file: PathBuf,
}

/// The API token every test bed config accepts (`Authorization: Bearer ...`).
pub const API_TOKEN: &str = "test-token-0123456789abcdef";

impl Topology {
    /// The IPv4 topology of the module docs (`build_with(n, Family::V4)`).
    pub fn build(n_origins: usize) -> Self {
        Self::build_with(n_origins, Family::V4)
    }

    /// The topology with `n_origins` origins and the address families of `family`.
    pub fn build_with(n_origins: usize, family: Family) -> Self {
        let id = unique_id("lb");
        let client = NetNs::new(&format!("{id}-c"));
        let lb = NetNs::new(&format!("{id}-lb"));
        let origins: Vec<NetNs> = (1..=n_origins)
            .map(|i| NetNs::new(&format!("{id}-o{i}")))
            .collect();
        let dual = family == Family::Dual;
        if dual {
            for ns in [&client, &lb].into_iter().chain(&origins) {
                enable_ipv6(ns);
            }
        }
        let mut lb_ifaces = Vec::new();

        let link =
            |far_ns: &NetNs, far: &str, near: &str, far_addr: &str, near_addr: &str, gw: &str| {
                sh(
                    "ip",
                    &["link", "add", far, "type", "veth", "peer", "name", near],
                );
                sh("ip", &["link", "set", far, "netns", &far_ns.name]);
                sh("ip", &["link", "set", near, "netns", &lb.name]);
                far_ns.ip(&["addr", "add", far_addr, "dev", far]);
                far_ns.ip(&["link", "set", far, "up"]);
                far_ns.ip(&["route", "add", "default", "via", gw]);
                lb.ip(&["addr", "add", near_addr, "dev", near]);
                lb.ip(&["link", "set", near, "up"]);
                // Frames XDP redirects or bounces into a veth are delivered only when the far end
                // has NAPI (GRO on, Linux 5.13+). With TX checksum offload the sender leaves a
                // partial checksum that the redirected frame cannot carry: compute it in full.
                far_ns.exec("ethtool", &["-K", far, "gro", "on", "tx", "off"]);
            };
        let cif = format!("{id}c");
        link(
            &client,
            &format!("{id}cx"),
            &cif,
            "10.0.1.2/24",
            "10.0.1.1/24",
            "10.0.1.1",
        );
        client.ip(&["addr", "add", "10.0.1.3/24", "dev", &format!("{id}cx")]);
        if dual {
            let cx = format!("{id}cx");
            for a in [CLIENT6, CLIENT6_2] {
                client.ip(&["-6", "addr", "add", &format!("{a}/64"), "dev", &cx, "nodad"]);
            }
            client.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &LB_CLIENT_SIDE6.to_string(),
            ]);
            lb.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{LB_CLIENT_SIDE6}/64"),
                "dev",
                &cif,
                "nodad",
            ]);
        }
        lb_ifaces.push(cif);
        for (i, ns) in origins.iter().enumerate() {
            let n = i + 1;
            let near = format!("{id}{n}");
            let o = origin_addr(n);
            let [a, b, c, _] = o.octets();
            link(
                ns,
                &format!("{id}{n}x"),
                &near,
                &format!("{o}/24"),
                &format!("{a}.{b}.{c}.1/24"),
                &format!("{a}.{b}.{c}.1"),
            );
            if dual {
                let o6 = origin_addr6(n);
                let gw6 = Ipv6Addr::new(0x2001, 0xdb8, subnet6(n), 0, 0, 0, 0, 1);
                let far = format!("{id}{n}x");
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{o6}/64"),
                    "dev",
                    &far,
                    "nodad",
                ]);
                ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()]);
                lb.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{gw6}/64"),
                    "dev",
                    &near,
                    "nodad",
                ]);
            }
            lb_ifaces.push(near);
        }
        lb.ip(&["addr", "add", &format!("{SNAT}/32"), "dev", "lo"]);
        lb.sysctl("net.ipv4.conf.all.forwarding", "1");
        if dual {
            lb.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{SNAT6}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
            lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        }
        // Wait for the links to come up (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lb
            .ip(&["-o", "link", "show"])
            .lines()
            .filter(|l| l.contains(&id))
            .all(|l| l.contains("LOWER_UP"))
        {
            assert!(Instant::now() < deadline, "veths did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&id);
        let status_file = std::env::temp_dir().join(format!("{id}-status.json"));
        let state_file = std::env::temp_dir().join(format!("{id}-state.json"));
        Self {
            state_file,
            id,
            client,
            lb,
            origins,
            lb_ifaces,
            pin_dir,
            status_file,
        }
    }

    /// The `[dataplane]`, `[api]` and `[agent]` sections for this topology (`[agent]` last,
    /// so that callers may append to it).
    pub fn base_config(&self, extra_dataplane: &str) -> String {
        self.base_config_snat(&format!("\"{SNAT}\""), extra_dataplane)
    }

    /// `base_config` with both SNAT addresses (`snat_address = ["10.0.0.1",
    /// "2001:db8::1"]`), for a `Family::Dual` topology.
    pub fn base_config_dual(&self, extra_dataplane: &str) -> String {
        self.base_config_snat(&format!("[\"{SNAT}\", \"{SNAT6}\"]"), extra_dataplane)
    }

    fn base_config_snat(&self, snat: &str, extra_dataplane: &str) -> String {
        let ifaces: Vec<String> = self.lb_ifaces.iter().map(|i| format!("\"{i}\"")).collect();
        format!(
            "[dataplane]\ninterfaces = [{}]\nsnat_address = {snat}\npin_dir = \"{}\"\nflow_table_size = 65536\n{extra_dataplane}\n\n[api]\nstate_file = \"{}\"\ntokens = [\"{API_TOKEN}\"]\n\n[agent]\nstatus_file = \"{}\"\n\n",
            ifaces.join(", "),
            self.pin_dir.display(),
            self.state_file.display(),
            self.status_file.display()
        )
    }

    /// A config for this topology: one pool `web` with the origins at `weights`, VIP 10.0.0.10:80.
    pub fn config(&self, weights: &[f64], extra_dataplane: &str) -> String {
        use std::fmt::Write as _;
        let mut s = self.base_config(extra_dataplane);
        s.push_str("[[pools]]\nname = \"web\"\norigins = [\n");
        for (i, w) in weights.iter().enumerate() {
            let n = i + 1;
            writeln!(
                s,
                "  {{ name = \"o{n}\", address = \"{}\", port = {ORIGIN_PORT}, weight = {w} }},",
                origin_addr(n)
            )
            .expect("string");
        }
        write!(
            s,
            "]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"web\"]\n"
        )
        .expect("string");
        s
    }

    /// A config for a `Family::Dual` topology: `config`'s pool `web` and load balancer
    /// `www` (10.0.0.10:80), and beside them pool `web6` with the origins' IPv6 addresses
    /// at the same `weights` and load balancer `www6` at [2001:db8::10]:80.
    pub fn config_dual(&self, weights: &[f64], extra_dataplane: &str) -> String {
        use std::fmt::Write as _;
        let v4 = self.config(weights, extra_dataplane);
        let objects = v4
            .split_once("[[pools]]")
            .map(|(_, rest)| format!("[[pools]]{rest}"))
            .expect("config has pools");
        let mut s = self.base_config_dual(extra_dataplane);
        s.push_str(&objects);
        s.push_str("\n[[pools]]\nname = \"web6\"\norigins = [\n");
        for (i, w) in weights.iter().enumerate() {
            let n = i + 1;
            writeln!(
                s,
                "  {{ name = \"o{n}\", address = \"{}\", port = {ORIGIN_PORT}, weight = {w} }},",
                origin_addr6(n)
            )
            .expect("string");
        }
        write!(
            s,
            "]\n\n[[load_balancers]]\nname = \"www6\"\naddress = \"{VIP6}\"\nport = {VIP_PORT}\ndefault_pools = [\"web6\"]\n"
        )
        .expect("string");
        s
    }

    /// Starts one server per origin namespace on `[::]:8080`, which serves IPv4 and IPv6
    /// (a dual-stack socket), for a `Family::Dual` topology. Instead of `start_servers`,
    /// whose IPv4 socket would hold the port.
    pub fn start_servers_dual(&self) -> Vec<Server> {
        self.origins
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                Server::start_on(
                    ns,
                    &format!("o{}", i + 1),
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    ORIGIN_PORT,
                )
            })
            .collect()
    }

    /// Gives the client namespace another address, `addr` (outside 10.0.1.0/24, so it can
    /// stand for a client in another prefix), routed by the LB namespace back to the client.
    /// Connect from it with `request(Some(SocketAddrV4::new(addr, 0)), ..)`. An IPv6 `addr`
    /// (a `Family::Dual` topology) is routed via `CLIENT6` and added without DAD.
    pub fn add_client_address(&self, addr: impl Into<IpAddr>) {
        let addr = addr.into();
        let cx = format!("{}cx", self.id);
        let (host, via) = match addr {
            IpAddr::V4(_) => (format!("{addr}/32"), CLIENT.to_string()),
            IpAddr::V6(_) => (format!("{addr}/128"), CLIENT6.to_string()),
        };
        let mut add = vec!["addr", "add", &host, "dev", &cx];
        if addr.is_ipv6() {
            add.push("nodad");
        }
        self.client.ip(&add);
        self.lb.ip(&[
            "route",
            "add",
            &host,
            "via",
            &via,
            "dev",
            &self.lb_ifaces[0],
        ]);
    }

    /// A host namespace behind `router` (the client namespace or an origin namespace),
    /// reached from it over a narrow hop: a new veth pair on `net`.0/24 (router `.1`, host
    /// `.2`, default route via the router), whose route in the router has MTU `mtu`, locked.
    /// Both interfaces stay at 1500, so neither end's MSS shows the narrow hop: the router
    /// forwards what fits and answers bigger DF packets with ICMP "fragmentation needed"
    /// (path-MTU discovery across the load balancer). The LB namespace routes `net` via
    /// `router_addr` on `lb_dev`. The namespace (and its veth) goes when the guard drops.
    ///
    /// With `router_addr6` (a `Family::Dual` topology), IPv6 beside on the same hop:
    /// `host_net6(net)`/64 (router `::1`, host `::2`), the router's route to it at `mtu`,
    /// locked, and the LB's route to it via `router_addr6`.
    pub fn add_host_behind(
        &self,
        router: &NetNs,
        router_addr: Ipv4Addr,
        router_addr6: Option<Ipv6Addr>,
        lb_dev: &str,
        net: [u8; 3],
        mtu: u32,
    ) -> NetNs {
        let [a, b, c] = net;
        let host = NetNs::new(&format!("{}-h{c}", self.id));
        if router_addr6.is_some() {
            enable_ipv6(&host);
        }
        let (near, far) = (format!("{}h{c}", self.id), format!("{}h{c}x", self.id));
        sh(
            "ip",
            &["link", "add", &near, "type", "veth", "peer", "name", &far],
        );
        sh("ip", &["link", "set", &near, "netns", &router.name]);
        sh("ip", &["link", "set", &far, "netns", &host.name]);
        let (gw, addr, prefix) = (
            format!("{a}.{b}.{c}.1"),
            format!("{a}.{b}.{c}.2"),
            format!("{a}.{b}.{c}.0/24"),
        );
        router.ip(&["addr", "add", &format!("{gw}/24"), "dev", &near]);
        router.ip(&["link", "set", &near, "up"]);
        host.ip(&["addr", "add", &format!("{addr}/24"), "dev", &far]);
        host.ip(&["link", "set", &far, "up"]);
        host.ip(&["route", "add", "default", "via", &gw]);
        router.ip(&[
            "route",
            "replace",
            &prefix,
            "dev",
            &near,
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            &gw,
            "mtu",
            "lock",
            &mtu.to_string(),
        ]);
        router.sysctl("net.ipv4.conf.all.forwarding", "1");
        // Full checksums from the host (the router forwards its frames to an XDP veth).
        host.exec("ethtool", &["-K", &far, "tx", "off"]);
        self.lb.ip(&[
            "route",
            "add",
            &prefix,
            "via",
            &router_addr.to_string(),
            "dev",
            lb_dev,
        ]);
        if let Some(via6) = router_addr6 {
            let net6 = host_net6(net);
            let (gw6, prefix6) = (format!("{net6}1"), format!("{net6}/64"));
            router.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                &near,
                "nodad",
            ]);
            host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{net6}2/64"),
                "dev",
                &far,
                "nodad",
            ]);
            host.ip(&["-6", "route", "add", "default", "via", &gw6]);
            router.ip(&[
                "-6",
                "route",
                "replace",
                &prefix6,
                "dev",
                &near,
                "proto",
                "kernel",
                "metric",
                "256",
                "mtu",
                "lock",
                &mtu.to_string(),
            ]);
            router.sysctl("net.ipv6.conf.all.forwarding", "1");
            self.lb.ip(&[
                "-6",
                "route",
                "add",
                &prefix6,
                "via",
                &via6.to_string(),
                "dev",
                lb_dev,
            ]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !host
            .ip(&["-o", "link", "show", "dev", &far])
            .contains("LOWER_UP")
        {
            assert!(Instant::now() < deadline, "veth {far} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// Narrows the LB's own route to the subnet of its interface `lb_ifaces[i]` (client side
    /// 0, origin i) to `mtu`, locked, leaving the interface at 1500: the XDP FIB lookup then
    /// says FRAG_NEEDED for bigger rewritten packets, while frames of any size still arrive.
    /// (A lower MTU on the veth itself would make the kernel drop bigger frames arriving on
    /// it before XDP sees them.)
    pub fn narrow_lb_route(&self, i: usize, mtu: u32) {
        let (net, gw) = if i == 0 {
            ("10.0.1.0/24".to_owned(), LB_CLIENT_SIDE.to_string())
        } else {
            let [a, b, c, _] = origin_addr(i).octets();
            (format!("{a}.{b}.{c}.0/24"), format!("{a}.{b}.{c}.1"))
        };
        let mut args = vec![
            "route",
            "replace",
            &net,
            "dev",
            &self.lb_ifaces[i],
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            &gw,
        ];
        let m = mtu.to_string();
        if mtu > 0 {
            args.extend(["mtu", "lock", &m]);
        }
        self.lb.ip(&args);
    }

    /// `narrow_lb_route` for the IPv6 subnet of `lb_ifaces[i]` (a `Family::Dual` topology):
    /// the connected /64 route (metric 256, as the kernel makes it) gets MTU `mtu`, locked,
    /// or loses it with 0. IPv6 links have at least 1280 (RFC 8200 §5).
    pub fn narrow_lb_route6(&self, i: usize, mtu: u32) {
        let net = if i == 0 {
            "2001:db8:1::/64".to_owned()
        } else {
            format!("2001:db8:{:x}::/64", subnet6(i))
        };
        let mut args = vec![
            "-6",
            "route",
            "replace",
            &net,
            "dev",
            &self.lb_ifaces[i],
            "proto",
            "kernel",
            "metric",
            "256",
        ];
        let m = mtu.to_string();
        if mtu > 0 {
            args.extend(["mtu", "lock", &m]);
        }
        self.lb.ip(&args);
    }

    /// Starts one server per origin namespace.
    pub fn start_servers(&self) -> Vec<Server> {
        self.origins
            .iter()
            .enumerate()
            .map(|(i, ns)| Server::start(ns, &format!("o{}", i + 1), ORIGIN_PORT))
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Namespaces go with their fields (veths and XDP links die with them); pins do not.
        if let Ok(entries) = fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.pin_dir);
        let _ = fs::remove_file(&self.status_file);
        let _ = fs::remove_file(&self.state_file);
    }
}

/// FNV-1a 64 (`lb_common::hash`), to compare bulk transfers without keeping both copies.
pub use lb_common::hash::{fnv1a64 as fnv64, FNV_OFFSET as FNV_INIT};

/// Deterministic bulk content: byte `i` of a transfer.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

/// A TCP server in a namespace: an accept loop that hands each connection to a handler on
/// its own thread. Stopped (listener closed, so new connections are refused) on drop;
/// connections already accepted keep being served.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

impl Server {
    /// The name server of the module docs, on `port`. Protocol, one command line per
    /// connection: `NAME` -> `<name>\n`; `SEND <n>` -> `<name>\n` then n pattern bytes;
    /// `RECV <n>` -> reads n bytes, answers `<name> <fnv64 hex>\n`;
    /// `ECHO` -> `<name>\n`, then echoes every line until EOF.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Self {
        Self::start_on(ns, name, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }

    /// `start` on address `bind`: `::` serves IPv4 and IPv6 (dual stack), an IPv6 address
    /// IPv6 only.
    pub fn start_on(ns: &NetNs, name: &str, bind: IpAddr, port: u16) -> Self {
        let name = name.to_owned();
        Self::with_handler_on(ns, bind, port, Arc::new(move |s| serve(s, &name)))
    }

    /// A plain listener that accepts and closes (a TCP health port).
    pub fn tcp_port(ns: &NetNs, port: u16) -> Self {
        Self::with_handler(ns, port, Arc::new(drop))
    }

    /// An HTTP (or, with `tls`, HTTPS with a self-signed certificate) server whose answers
    /// `http` controls while it runs.
    pub fn http(ns: &NetNs, port: u16, http: &Arc<Http>, tls: bool) -> Self {
        let http = http.clone();
        let tls_cfg = tls.then(self_signed_tls);
        Self::with_handler(
            ns,
            port,
            Arc::new(move |s: TcpStream| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                match &tls_cfg {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                            return;
                        };
                        http.answer(rustls::StreamOwned::new(conn, s));
                    }
                    None => http.answer(s),
                }
            }),
        )
    }

    pub fn with_handler(ns: &NetNs, port: u16, handler: Handler) -> Self {
        Self::with_handler_on(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, handler)
    }

    /// `with_handler` listening on `bind` (`::` for both families).
    pub fn with_handler_on(ns: &NetNs, bind: IpAddr, port: u16, handler: Handler) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let path = ns.path();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let f = fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind((bind, port)).expect("bind server");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let h = handler.clone();
                        workers.retain(|w| !w.is_finished());
                        workers.push(std::thread::spawn(move || h(s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            drop(l);
            for w in workers {
                let _ = w.join();
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an HTTP test server answers; change it while the server runs.
pub struct Http {
    pub status: AtomicU32,
    pub body: Mutex<String>,
    /// Alternate 200 and 500 on successive requests.
    pub alternate: AtomicBool,
    pub requests: AtomicU32,
    /// Wait this long after reading a request before answering (a slow origin).
    pub delay_ms: AtomicU32,
}

impl Http {
    pub fn new(status: u16, body: &str) -> Arc<Self> {
        Arc::new(Self {
            status: AtomicU32::new(u32::from(status)),
            body: Mutex::new(body.to_owned()),
            alternate: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            delay_ms: AtomicU32::new(0),
        })
    }

    fn answer<S: Read + Write>(&self, mut s: S) {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(u64::from(delay)));
        }
        let status = if self.alternate.load(Ordering::Relaxed) {
            if n.is_multiple_of(2) {
                200
            } else {
                500
            }
        } else {
            self.status.load(Ordering::Relaxed)
        };
        let body = self.body.lock().expect("body").clone();
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.flush();
    }
}

fn self_signed_tls() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["origin.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Arc::new(cfg)
}

fn serve(s: TcpStream, name: &str) {
    let _ = s.set_nonblocking(false);
    // Long enough for connections tests hold open across minutes of kills and restarts;
    // still bounded, so a forgotten client cannot pin a thread forever.
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let n: usize = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let _ = match cmd {
        "NAME" => writeln!(w, "{name}"),
        "SEND" => writeln!(w, "{name}").and_then(|()| w.write_all(&pattern(n))),
        "RECV" => {
            let mut h = FNV_INIT;
            let mut left = n;
            let mut buf = vec![0u8; 65536];
            while left > 0 {
                match r.read(&mut buf[..left.min(65536)]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        h = fnv64(&buf[..k], h);
                        left -= k;
                    }
                }
            }
            writeln!(w, "{name} {h:016x}")
        }
        "ECHO" => {
            let _ = writeln!(w, "{name}");
            let mut l = String::new();
            loop {
                l.clear();
                match r.read_line(&mut l) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if w.write_all(l.as_bytes()).is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    };
}

/// Opens a TCP connection (optionally from a fixed local address and port) with a timeout.
pub fn connect(
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    connect_ip(from.map(SocketAddr::V4), SocketAddr::V4(to), timeout)
}

/// `connect` for either family (`to`'s; `from`, if given, must be of the same).
pub fn connect_ip(
    from: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(f) = from {
        sock.set_reuse_address(true)?;
        sock.bind(&f.into())?;
    }
    sock.connect_timeout(&to.into(), timeout)?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One request: connect, send `cmd`, read the reply to EOF.
pub fn request(from: Option<SocketAddrV4>, to: SocketAddrV4, cmd: &str) -> std::io::Result<String> {
    request_ip(from.map(SocketAddr::V4), SocketAddr::V4(to), cmd)
}

/// `request` for either family.
pub fn request_ip(from: Option<SocketAddr>, to: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let mut s = connect_ip(from, to, Duration::from_secs(5))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `SEND n`: returns the answering origin's name and the `n` bytes it sent.
pub fn download(to: SocketAddrV4, n: usize) -> std::io::Result<(String, Vec<u8>)> {
    download_ip(SocketAddr::V4(to), n)
}

/// `download` for either family.
pub fn download_ip(to: SocketAddr, n: usize) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = connect_ip(None, to, Duration::from_secs(30))?;
    s.write_all(format!("SEND {n}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut name = String::new();
    r.read_line(&mut name)?;
    let mut body = Vec::with_capacity(n);
    r.read_to_end(&mut body)?;
    Ok((name.trim().to_owned(), body))
}

/// `RECV n`: sends `data`, returns the origin's name and its FNV-1a 64 of what it received.
pub fn upload(to: SocketAddrV4, data: &[u8]) -> std::io::Result<(String, u64)> {
    upload_ip(SocketAddr::V4(to), data)
}

/// `upload` for either family.
pub fn upload_ip(to: SocketAddr, data: &[u8]) -> std::io::Result<(String, u64)> {
    let mut s = connect_ip(None, to, Duration::from_secs(30))?;
    s.write_all(format!("RECV {}\n", data.len()).as_bytes())?;
    s.write_all(data)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let mut it = reply.split_whitespace();
    let name = it.next().unwrap_or_default().to_owned();
    let hash = it
        .next()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| std::io::Error::other(format!("bad RECV reply {reply:?}")))?;
    Ok((name, hash))
}

pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, VIP_PORT)
}

/// The IPv6 VIP of `config_dual`, `[2001:db8::10]:80`.
pub fn vip6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), VIP_PORT)
}

/// Runs `<bin> --config <cfg> check` inside `ns`: (success, stdout, stderr).
pub fn agent_check(bin: &Path, ns: &NetNs, cfg: &Path) -> (bool, String, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(bin)
        .arg("--config")
        .arg(cfg)
        .arg("check")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run lb-agent check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the agent under test (`agent_bin()`) with the XDP object under test in `ns`: see
/// `Agent::start`.
pub fn start_agent(ns: &NetNs, config: &Path, extra: &[&str]) -> Agent {
    start_agent_until(ns, config, extra, "data path ready")
}

/// `start_agent`, returning as soon as the agent logs a line that contains `ready`.
pub fn start_agent_until(ns: &NetNs, config: &Path, extra: &[&str], ready: &str) -> Agent {
    let object = ebpf_object().to_str().expect("UTF-8 object path");
    let args: Vec<&str> = ["--bpf-object", object]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Agent::start_until(agent_bin(), ns, config, &args, ready)
}

/// A running topology: the agent under test (dropped first), servers, config, namespaces
/// (last).
pub struct Running {
    pub agent: Agent,
    pub servers: Vec<Server>,
    pub cfg: TempFile,
    pub topo: Topology,
}

impl Running {
    /// `weights.len()` origins, each serving `Server::start` on :8080, in one pool `web`
    /// at `weights`; `extra_dataplane` lines in `[dataplane]`; the agent running.
    pub fn start(weights: &[f64], extra_dataplane: &str) -> Self {
        Self::start_with(weights, extra_dataplane, "", Topology::start_servers)
    }

    /// `start` on a `Family::Dual` topology with `config_dual` (an IPv4 and an IPv6 load
    /// balancer over the same origins) and dual-stack servers.
    pub fn start_dual(weights: &[f64], extra_dataplane: &str) -> Self {
        require_prerequisites();
        let topo = Topology::build_with(weights.len(), Family::Dual);
        let servers = topo.start_servers_dual();
        let cfg = TempFile::new("lb.toml", &topo.config_dual(weights, extra_dataplane));
        let agent = start_agent(&topo.lb, &cfg.path, &[]);
        Self {
            agent,
            servers,
            cfg,
            topo,
        }
    }

    /// `start` with `extra_objects` appended to the config and the caller's servers.
    pub fn start_with(
        weights: &[f64],
        extra_dataplane: &str,
        extra_objects: &str,
        servers: impl FnOnce(&Topology) -> Vec<Server>,
    ) -> Self {
        require_prerequisites();
        let topo = Topology::build(weights.len());
        let servers = servers(&topo);
        let mut config = topo.config(weights, extra_dataplane);
        if !extra_objects.is_empty() {
            config = format!("{config}\n{extra_objects}");
        }
        let cfg = TempFile::new("lb.toml", &config);
        let agent = start_agent(&topo.lb, &cfg.path, &[]);
        Self {
            agent,
            servers,
            cfg,
            topo,
        }
    }
}

/// An `lb-agent` process in the LB namespace, stopped (SIGTERM) on drop.
pub struct Agent {
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `bin --config <config>` in `ns` and waits (at most 60 s) for "data path ready".
    pub fn start(bin: &Path, ns: &NetNs, config: &Path, extra: &[&str]) -> Self {
        Self::start_until(bin, ns, config, extra, "data path ready")
    }

    /// Starts `bin --config <config>` in `ns` and waits (at most 60 s) for a log line that
    /// contains `ready`.
    pub fn start_until(bin: &Path, ns: &NetNs, config: &Path, extra: &[&str], ready: &str) -> Self {
        let net = format!("--net={}", ns.path().display());
        let mut child = Command::new("nsenter")
            .arg(&net)
            .arg("--")
            .arg(bin)
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("LB_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let log2 = log.clone();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(&ready) {
                    let _ = tx.send(true);
                }
                log2.lock().expect("log").push(line);
            }
            let _ = tx.send(false);
        });
        let mut agent = Self { child, log };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(true) => agent,
            other => {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "agent did not become ready ({other:?}); its log:\n{}",
                    agent.log_text()
                );
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// SIGTERM, then wait (at most 10 s, then SIGKILL). Returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                if !st.success() {
                    // Let the log reader take the last lines before they are shown.
                    std::thread::sleep(Duration::from_millis(100));
                    eprintln!("agent exited with {st}; its log:\n{}", self.log_text());
                }
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                eprintln!(
                    "agent still running 10 s after SIGTERM, killed; its log:\n{}",
                    self.log_text()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (config reload) and waits (at most 10 s) for the agent to log the outcome:
    /// `Ok` for "config reloaded", `Err(line)` for a rejection.
    pub fn reload(&self) -> Result<(), String> {
        let seen = self.log.lock().expect("log").len();
        #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            {
                let log = self.log.lock().expect("log");
                for l in &log[seen.min(log.len())..] {
                    if l.contains("config reloaded") {
                        return Ok(());
                    }
                    if l.contains("reload rejected") {
                        return Err(l.clone());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("no reload outcome logged within 10 s".into())
    }

    /// Waits (bounded) until a log line after the first `skip` lines contains `needle`.
    pub fn wait_log(&self, skip: usize, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            {
                let log = self.log.lock().expect("log");
                if let Some(l) = log.iter().skip(skip).find(|l| l.contains(needle)) {
                    return Some(l.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().expect("log").len()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Calls `f` every `every` until it returns `Some`; panics naming `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// Writes `text` to a unique temporary file that is removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Removes `path` (written by someone else) on drop.
    pub fn adopt(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}-{name}", unique_id("f")));
        fs::write(&path, text).expect("write temp file");
        Self { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Debian's Chromium, for rendering the agent's dashboard in tests.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Loads `url` in headless Chromium and returns the DOM as serialized after `budget` of
/// virtual time (`--dump-dom`); with `screenshot`, a second run writes a 1280x900 PNG there.
/// With `ns`, Chromium runs in that network namespace (`nsenter --net`), so `127.0.0.1` is
/// the namespace's loopback, where the agent's API listens.
///
/// `--virtual-time-budget` fast-forwards timers but pauses virtual time while a network
/// fetch is pending, so `fetch()` to a live server completes and a page that polls every
/// second gets about `budget / 1 s` polls. Wall time is mostly Chromium's start-up (under
/// a second against a local server), plus the real time the requests take. A request that
/// never finishes stalls virtual time: each run is killed (its whole process group) at
/// `budget` + 30 s, which panics. Each run gets a fresh profile directory, removed
/// afterwards, so nothing (sessionStorage included) carries over between calls.
pub fn chromium_render(
    ns: Option<&NetNs>,
    url: &str,
    screenshot: Option<&Path>,
    budget: Duration,
) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "Chromium is missing: apt-get install chromium (cargo xtask setup installs it)"
    );
    let dom = chromium_run(ns, url, budget, &["--dump-dom"]);
    assert!(
        dom.contains("<html"),
        "Chromium dumped no DOM for {url}: {dom:?}"
    );
    if let Some(png) = screenshot {
        let _ = fs::remove_file(png);
        let shot = format!("--screenshot={}", png.display());
        chromium_run(ns, url, budget, &[&shot, "--window-size=1280,900"]);
        assert!(
            png.exists(),
            "Chromium wrote no screenshot to {}",
            png.display()
        );
    }
    dom
}

/// One Chromium run: its stdout, or a panic with its stderr when it fails or times out.
fn chromium_run(ns: Option<&NetNs>, url: &str, budget: Duration, extra: &[&str]) -> String {
    use std::os::unix::process::CommandExt as _;

    let profile = std::env::temp_dir().join(unique_id("chromium"));
    // Chromium's own temporary files (its singleton socket directory, left behind when it is
    // killed) go under the profile too, so removing the profile removes everything.
    let tmp = profile.join("tmp");
    fs::create_dir_all(&tmp).expect("chromium profile dir");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display()))
                .arg("--")
                .arg(CHROMIUM);
            c
        }
        None => Command::new(CHROMIUM),
    };
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()))
    .args(extra)
    .arg(url)
    .env("TMPDIR", &tmp)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a timeout kills the renderer and GPU helpers too.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let out = read_in_background(child.stdout.take());
    let err = read_in_background(child.stderr.take());
    let deadline = Instant::now() + budget + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            #[expect(clippy::cast_possible_wrap, reason = "pids fit in i32")]
            // SAFETY: kill has no memory-safety preconditions; the group is the child's own.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let _ = fs::remove_dir_all(&profile);
    match status {
        None => panic!(
            "Chromium did not finish {url} within {budget:?} of virtual time + 30 s; its stderr:\n{err}"
        ),
        Some(st) if !st.success() => {
            panic!("Chromium failed on {url} ({st}); its stderr:\n{err}")
        }
        Some(_) => out,
    }
}

/// Reads a pipe to its end on a thread (so a chatty child never blocks on a full pipe).
fn read_in_background<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}
