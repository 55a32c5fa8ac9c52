//! The kernel side as the agent sees it: loads the XDP object, pins (or adopts) every map and
//! every XDP link under one bpffs directory, and hands out typed map handles.
//!
//! Restart policy: maps and links are pinned, so the data path keeps forwarding while no agent
//! runs. A new agent opens the same pins: established flows stay in the flow table, and each
//! pinned link is switched to the newly loaded program with one atomic `bpf_link_update`.
//! `teardown` is the only thing that detaches.

use std::{
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::LpmTrie, Array, DevMapHash, HashMap, Map, MapData, MapInfo, PerCpuArray,
        ProgramArray,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    event, map_names as names, Affinity, AffinityKey, Counters, Flow, FlowKey, GeoKey, GeoPlanKey,
    GeoValue, OriginMeta, RevFlow, RingMeta, Settings, VipKey, VipMeta, AFFINITY_SIZE,
    GEO_MAX_PREFIXES, GEO_PLAN_SIZE, MAX_INTERFACES, MAX_ORIGINS, MAX_RINGS, MAX_VIPS, POOL_SEL_M,
    PROGRAM_NAME, TAIL_PROGRAMS,
};

use crate::config;

/// `statfs` magic of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Prefix of the pinned XDP link of each interface under the pin directory.
pub const LINK_PREFIX: &str = "link_";
/// File name of the object next to the agent binary, where `cargo xtask build-ebpf` copies it.
pub const OBJECT_FILE: &str = "lb-ebpf.o";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("BPF object not found; looked in: {tried}. Build it with `cargo xtask build-ebpf`, or pass --bpf-object")]
    ObjectMissing { tried: String },
    #[error("pin directory {path}: {reason}")]
    PinDir { path: PathBuf, reason: String },
    #[error("pinned map {path} does not match this build ({what}: pinned {pinned}, expected {expected}). {fix}")]
    Incompatible {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        expected: u32,
        fix: String,
    },
    #[error("loading BPF object {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("BPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching XDP to {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("{0}")]
    Host(String),
}

type Result<T> = std::result::Result<T, DataplaneError>;

pub(crate) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        reason: e.to_string(),
    }
}

/// Finds the BPF object: the explicit path, else `lb-ebpf.o` next to the agent binary, else
/// the workspace build output.
/// The object of test-only programs (`xdp_pass`, `xdp_drop`, `xdp_tx_floor`), built next to
/// the load balancer's object `main` by `cargo xtask build-ebpf`, and kept out of it.
pub fn test_object(main: &Path) -> PathBuf {
    main.with_file_name("lb-test-progs")
}

pub fn find_object(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                candidates.push(dir.join(OBJECT_FILE));
                // target/<profile>/deps/<test> -> target/<profile>/lb-ebpf.o
                if let Some(up) = dir.parent() {
                    candidates.push(up.join(OBJECT_FILE));
                }
            }
        }
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf"),
        );
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(DataplaneError::ObjectMissing {
        tried: tried.join(", "),
    })
}

/// Expected (key size, value size, max entries) of each map, to refuse adopting pins made by
/// an incompatible build or with another flow-table size.
fn expected_layout(name: &str, flow_table_size: u32) -> (u32, u32, u32) {
    use std::mem::size_of;
    let s = |n: usize| u32::try_from(n).expect("small");
    match name {
        names::SETTINGS => (4, s(size_of::<Settings>()), 1),
        names::VIPS => (
            s(size_of::<VipKey>()),
            s(size_of::<VipMeta>()),
            2 * MAX_VIPS,
        ),
        names::RINGS => (4, 4, lb_common::RING_SLOTS),
        names::ORIGINS => (4, s(size_of::<OriginMeta>()), MAX_ORIGINS),
        names::FLOWS => (
            s(size_of::<FlowKey>()),
            s(size_of::<Flow>()),
            flow_table_size,
        ),
        names::REV_FLOWS => (
            s(size_of::<FlowKey>()),
            s(size_of::<RevFlow>()),
            flow_table_size,
        ),
        names::TX_PORTS => (4, 8, MAX_INTERFACES),
        names::VIP_STATS => (4, s(size_of::<Counters>()), MAX_VIPS),
        names::ORIGIN_STATS => (4, s(size_of::<Counters>()), MAX_ORIGINS),
        names::EVENTS => (4, 8, event::COUNT),
        names::RING_META => (4, s(size_of::<RingMeta>()), MAX_RINGS),
        names::POOL_SEL => (4, 4, MAX_VIPS * POOL_SEL_M),
        names::GEO => (
            s(size_of::<GeoKey>()),
            s(size_of::<GeoValue>()),
            GEO_MAX_PREFIXES,
        ),
        names::GEO_PLAN => (s(size_of::<GeoPlanKey>()), 4, GEO_PLAN_SIZE),
        names::AFFINITY => (
            s(size_of::<AffinityKey>()),
            s(size_of::<Affinity>()),
            AFFINITY_SIZE,
        ),
        names::ORIGIN_FLOWS => (4, 8, MAX_ORIGINS),
        names::TAILS => (4, 4, lb_common::TAIL_SLOTS),
        names::HANDSHAKES | names::UDP_PENDING => (4, s(size_of::<lb_common::Handshakes>()), 1),
        names::ORIGIN_NH => (4, s(size_of::<lb_common::OriginNextHop>()), MAX_ORIGINS),
        names::LOCAL_ADDRS => (16, 4, lb_common::MAX_LOCAL_ADDRS),
        names::VIP_IDS => (4, s(size_of::<lb_common::VipById>()), MAX_VIPS),
        other => unreachable!("unknown map {other}"),
    }
}

/// Checks that `dir` is (or can be created) on a bpffs mount.
pub fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let err = |reason: String| DataplaneError::PinDir {
        path: dir.to_owned(),
        reason,
    };
    fs::create_dir_all(dir).map_err(|e| {
        err(format!(
            "cannot create it ({e}); is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`"
        ))
    })?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err("path contains a NUL byte".into()))?;
    // SAFETY: statfs writes into the zeroed struct we own; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    if st.f_type != BPF_FS_MAGIC {
        return Err(err(
            "not on a bpffs mount; use a directory under /sys/fs/bpf (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses pins whose layout differs from this build's, before anything is loaded or changed.
pub fn check_pins(dir: &Path, flow_table_size: u32) -> Result<()> {
    for name in names::ALL {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let (k, v, n) = expected_layout(name, flow_table_size);
        let fix = format!(
            "Run `lb-agent teardown --pin-dir {}` to remove the old data path (established flows are dropped), or use another pin_dir",
            dir.display()
        );
        let flags = if name == names::RINGS {
            lb_common::RINGS_MAP_FLAGS
        } else {
            info.map_flags()
        };
        for (what, pinned, expected) in [
            ("key size", info.key_size(), k),
            ("value size", info.value_size(), v),
            ("max entries", info.max_entries(), n),
            ("map flags", info.map_flags(), flags),
        ] {
            if pinned != expected {
                let fix = if what == "max entries"
                    && (name == names::FLOWS || name == names::REV_FLOWS)
                {
                    format!("dataplane.flow_table_size changed; a pinned flow table cannot be resized in place. Set it back to {pinned}, or: {fix}")
                } else {
                    fix.clone()
                };
                return Err(DataplaneError::Incompatible {
                    path,
                    what,
                    pinned,
                    expected,
                    fix,
                });
            }
        }
    }
    Ok(())
}

/// `RINGS` mapped into this process: slots are read and written with plain (atomic) 32-bit
/// loads and stores on memory the kernel shares with the data path. The kernel lays array
/// elements out `round_up(value_size, 8)` bytes apart (kernel/bpf/arraymap.c), so a u32 slot
/// is the first half of an 8-byte element.
pub struct RingMemory {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU32>,
    len: usize,
}

/// Bytes between two elements of a BPF array of u32.
const ELEM: usize = 8;

/// Length of the mapping of `entries` elements, whole pages.
fn mapped_bytes(entries: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    (entries * ELEM).div_ceil(page) * page
}

// SAFETY: the mapping is plain shared memory accessed through atomics.
unsafe impl Send for RingMemory {}

impl RingMemory {
    /// Maps the whole array behind `fd` (a BPF_F_MMAPABLE array of u32).
    fn map(fd: std::os::fd::BorrowedFd<'_>, entries: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let bytes = mapped_bytes(entries);
        // SAFETY: a fresh shared mapping of a map fd; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: std::ptr::NonNull::new(p.cast())
                .ok_or_else(|| std::io::Error::other("mmap returned null"))?,
            len: entries,
        })
    }

    fn slot(&self, i: u32) -> &std::sync::atomic::AtomicU32 {
        assert!((i as usize) < self.len, "ring slot {i} out of range");
        // SAFETY: in bounds (checked), 8-byte aligned, and valid while self lives.
        unsafe { &*self.ptr.as_ptr().add(i as usize * (ELEM / 4)) }
    }

    pub fn get(&self, i: u32) -> u32 {
        self.slot(i).load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set(&self, i: u32, v: u32) {
        self.slot(i).store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what map() mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), mapped_bytes(self.len));
        }
    }
}

/// Typed handles on every map. Obtained from a loaded program or from the pins alone.
pub struct Maps {
    /// `RINGS` through mmap, when the kernel allows it (else the syscall handle below).
    pub rings_mem: Option<RingMemory>,
    pub settings: Array<MapData, Settings>,
    pub vips: HashMap<MapData, VipKey, VipMeta>,
    pub rings: Array<MapData, u32>,
    pub origins: Array<MapData, OriginMeta>,
    pub flows: HashMap<MapData, FlowKey, Flow>,
    pub rev_flows: HashMap<MapData, FlowKey, RevFlow>,
    pub tx_ports: DevMapHash<MapData>,
    pub vip_stats: PerCpuArray<MapData, Counters>,
    pub origin_stats: PerCpuArray<MapData, Counters>,
    pub events: PerCpuArray<MapData, u64>,
    pub ring_meta: Array<MapData, RingMeta>,
    pub pool_sel: Array<MapData, u32>,
    pub geo: LpmTrie<MapData, [u8; 16], GeoValue>,
    pub geo_plan: HashMap<MapData, GeoPlanKey, u32>,
    pub affinity: HashMap<MapData, AffinityKey, Affinity>,
    pub origin_flows: Array<MapData, u64>,
    pub handshakes: Array<MapData, lb_common::Handshakes>,
    /// Written by the data path only (its next-hop cache); read by tests and for inspection.
    pub origin_nh: Array<MapData, lb_common::OriginNextHop>,
    /// The host's own addresses (IPv4-mapped), for the data path's no-open-router check.
    pub local_addrs: HashMap<MapData, [u8; 16], u32>,
    /// VIP id -> its `VIPS` entry, for established flows' packets.
    pub vip_ids: Array<MapData, lb_common::VipById>,
    /// New UDP flows per second and those answered, for the UDP budget.
    pub udp_pending: Array<MapData, lb_common::Handshakes>,
}

impl Maps {
    fn from_source(mut take: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        macro_rules! typed {
            ($name:expr) => {{
                let name = $name;
                take(name)?.try_into().map_err(map_err(name))?
            }};
        }
        let rings_map = take(names::RINGS)?;
        let rings_mem = match &rings_map {
            Map::Array(data) => RingMemory::map(
                std::os::fd::AsFd::as_fd(data.fd()),
                lb_common::RING_SLOTS as usize,
            )
            .map_err(|e| {
                tracing::warn!("RINGS is not mmapable ({e}); ring slots are written by syscall")
            })
            .ok(),
            _ => None,
        };
        Ok(Self {
            rings_mem,
            settings: typed!(names::SETTINGS),
            vips: typed!(names::VIPS),
            rings: rings_map.try_into().map_err(map_err(names::RINGS))?,
            origins: typed!(names::ORIGINS),
            flows: typed!(names::FLOWS),
            rev_flows: typed!(names::REV_FLOWS),
            tx_ports: typed!(names::TX_PORTS),
            vip_stats: typed!(names::VIP_STATS),
            origin_stats: typed!(names::ORIGIN_STATS),
            events: typed!(names::EVENTS),
            ring_meta: typed!(names::RING_META),
            pool_sel: typed!(names::POOL_SEL),
            geo: typed!(names::GEO),
            geo_plan: typed!(names::GEO_PLAN),
            affinity: typed!(names::AFFINITY),
            origin_flows: typed!(names::ORIGIN_FLOWS),
            handshakes: typed!(names::HANDSHAKES),
            origin_nh: typed!(names::ORIGIN_NH),
            local_addrs: typed!(names::LOCAL_ADDRS),
            vip_ids: typed!(names::VIP_IDS),
            udp_pending: typed!(names::UDP_PENDING),
        })
    }

    /// Opens the pinned maps of a running (or stopped) data path, without loading anything.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::from_source(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Map {
                name,
                reason: format!(
                    "{e} (at {}; is the agent set up with this pin_dir?)",
                    path.display()
                ),
            })?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    /// Sums the per-CPU event counters, in `event::NAMES` order.
    pub fn event_totals(&self) -> Result<Vec<u64>> {
        (0..event::COUNT)
            .map(|i| {
                self.events
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(names::EVENTS))
            })
            .collect()
    }

    /// Sums one VIP's or origin's per-CPU counters.
    pub fn counters(map: &PerCpuArray<MapData, Counters>, id: u32) -> Result<Counters> {
        let per_cpu = map.get(&id, 0).map_err(map_err("stats"))?;
        let mut t = Counters::default();
        for c in per_cpu.iter() {
            t.packets += c.packets;
            t.bytes += c.bytes;
            t.new_flows += c.new_flows;
            t.reply_packets += c.reply_packets;
            t.reply_bytes += c.reply_bytes;
        }
        Ok(t)
    }
}

/// A loaded program plus its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

fn xdp_mode(mode: config::XdpMode) -> XdpMode {
    match mode {
        config::XdpMode::Native => XdpMode::Driver,
        config::XdpMode::Generic => XdpMode::Skb,
        config::XdpMode::Auto => XdpMode::Default,
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Dataplane {
    /// Loads the object, creating every map pinned under `pin_dir` or adopting the pins that
    /// are already there. Nothing is attached yet.
    pub fn load(object: &Path, pin_dir: &Path, flow_table_size: u32) -> Result<Self> {
        ensure_pin_dir(pin_dir)?;
        check_pins(pin_dir, flow_table_size)?;
        let pins: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(names::FLOWS, flow_table_size)
            .map_max_entries(names::REV_FLOWS, flow_table_size);
        let mut ebpf = loader.load_file(object).map_err(|e| DataplaneError::Load {
            path: object.to_owned(),
            source: Box::new(e),
        })?;
        let all = std::iter::once(PROGRAM_NAME).chain(TAIL_PROGRAMS.iter().map(|(n, _)| *n));
        for name in all {
            program(&mut ebpf, name)?
                .load()
                .map_err(|e| DataplaneError::Program {
                    name: name.into(),
                    source: Box::new(e),
                })?;
        }
        // The tail-called programs (UDP, IPv6, IPv6 UDP) into their slots (replacing an
        // earlier agent's, in a pinned map: the running lb_xdp switches to them at once).
        let mut fds = Vec::with_capacity(TAIL_PROGRAMS.len());
        for (name, slot) in TAIL_PROGRAMS {
            let fd = program(&mut ebpf, name)?
                .fd()
                .map_err(|e| DataplaneError::Program {
                    name: name.into(),
                    source: Box::new(e),
                })?
                .try_clone()
                .map_err(|e| DataplaneError::Host(format!("duplicating {name}'s fd: {e}")))?;
            fds.push((slot, fd));
        }
        let tails = ebpf.map_mut(names::TAILS).ok_or(DataplaneError::Map {
            name: names::TAILS,
            reason: "not in the object".into(),
        })?;
        let mut tails: ProgramArray<&mut MapData> =
            ProgramArray::try_from(tails).map_err(map_err(names::TAILS))?;
        for (slot, fd) in &fds {
            tails.set(*slot, fd, 0).map_err(map_err(names::TAILS))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    /// Takes the typed map handles out (the program keeps its own references).
    pub fn take_maps(&mut self) -> Result<Maps> {
        let ebpf = &mut self.ebpf;
        Maps::from_source(|name| {
            ebpf.take_map(name).ok_or(DataplaneError::Map {
                name,
                reason: "not in the object (or already taken)".into(),
            })
        })
    }

    /// Attaches the program to every interface: a pinned link from an earlier agent is
    /// switched to this program atomically (no packet sees no program); otherwise a new link
    /// is created and pinned. Links of interfaces no longer configured are detached. Also
    /// fills `TX_PORTS` with exactly these interfaces.
    pub fn attach(
        &mut self,
        interfaces: &[String],
        mode: config::XdpMode,
        tx_ports: &mut DevMapHash<MapData>,
    ) -> Result<Vec<AttachOutcome>> {
        let mut outcomes = Vec::new();
        let mut wanted = Vec::new();
        for iface in interfaces {
            let idx = ifindex(iface).ok_or_else(|| DataplaneError::Attach {
                interface: iface.clone(),
                reason: "no such interface in this network namespace".into(),
            })?;
            wanted.push(idx);
            let path = self.pin_dir.join(format!("{LINK_PREFIX}{iface}"));
            let prog = program(&mut self.ebpf, PROGRAM_NAME)?;
            let mut replaced = false;
            if path.exists() {
                match replace_pinned(prog, &path) {
                    Ok(()) => replaced = true,
                    Err(reason) => {
                        tracing::warn!(interface = %iface, %reason, "pinned XDP link is unusable; attaching afresh");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            if !replaced {
                let id = prog.attach(iface, xdp_mode(mode)).map_err(|e| DataplaneError::Attach {
                    interface: iface.clone(),
                    reason: format!("{e} (another XDP program attached? `ip link set dev {iface} xdp off` removes it)"),
                })?;
                let link = prog.take_link(id).map_err(|e| DataplaneError::Attach {
                    interface: iface.clone(),
                    reason: e.to_string(),
                })?;
                let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
                    DataplaneError::Attach {
                        interface: iface.clone(),
                        reason: format!("kernel gave a netlink attachment, which cannot be pinned ({e}); bpf_link for XDP needs Linux 5.9+"),
                    }
                })?;
                fd.pin(&path).map_err(|e| DataplaneError::Attach {
                    interface: iface.clone(),
                    reason: format!("pinning link at {}: {e}", path.display()),
                })?;
            }
            tx_ports
                .insert(idx, idx, None, 0)
                .map_err(|e| DataplaneError::Map {
                    name: names::TX_PORTS,
                    reason: e.to_string(),
                })?;
            outcomes.push(AttachOutcome {
                interface: iface.clone(),
                ifindex: idx,
                replaced,
            });
        }
        // Interfaces dropped from the config: detach and forget them.
        for entry in fs::read_dir(&self.pin_dir).map_err(|e| DataplaneError::Host(e.to_string()))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
                if !interfaces.iter().any(|i| i == iface) {
                    tracing::info!(
                        interface = iface,
                        "interface left the config: detaching XDP"
                    );
                    detach_pinned(&entry.path());
                }
            }
        }
        let stale: Vec<u32> = tx_ports
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            let _ = tx_ports.remove(k);
        }
        Ok(outcomes)
    }

    /// Instructions the kernel verifier processed when it loaded `lb_xdp`.
    pub fn verified_insns(&mut self) -> Option<u32> {
        self.verified_insns_of(PROGRAM_NAME)
    }

    /// Instructions the kernel verifier processed when it loaded program `name` (`lb_xdp`,
    /// `lb_udp`).
    pub fn verified_insns_of(&mut self, name: &str) -> Option<u32> {
        program(&mut self.ebpf, name)
            .ok()?
            .info()
            .ok()?
            .verified_instruction_count()
    }

    /// The loaded XDP program (for `BPF_PROG_TEST_RUN` in tests and benchmarks).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf, PROGRAM_NAME)
    }
}

#[derive(Debug, Clone)]
pub struct AttachOutcome {
    pub interface: String,
    pub ifindex: u32,
    /// An earlier agent's link was switched to this program (true) or a new one made.
    pub replaced: bool,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| {
            DataplaneError::Host(format!("program {name} is missing from the BPF object"))
        })?
        .try_into()
        .map_err(|e| DataplaneError::Program {
            name: name.into(),
            source: Box::new(e),
        })
}

fn replace_pinned(prog: &mut Xdp, path: &Path) -> std::result::Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let fd = FdLink::from(pinned);
    let link = XdpLink::try_from(fd).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    // Keep the link alive past this process: the pin holds it, so forget our handle
    // instead of letting the program detach it on drop.
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| e.to_string())?;
    drop(fd); // closing our fd leaves the pinned link attached
    Ok(())
}

fn detach_pinned(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(link) => match link.unpin() {
            Ok(fd) => drop(fd), // last reference: the link detaches
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot unpin link"),
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open pinned link; removing the pin");
            let _ = fs::remove_file(path);
        }
    }
}

/// Detaches every pinned XDP link and removes every pinned map under `dir`, then `dir`
/// itself. Returns what it removed. Established flows are lost: this is the only call that
/// stops the data path.
pub fn teardown(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(DataplaneError::Host(format!("{}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(LINK_PREFIX) {
            detach_pinned(&path);
            removed.push(name);
        } else if names::ALL.contains(&name.as_str()) {
            fs::remove_file(&path)
                .map_err(|e| DataplaneError::Host(format!("{}: {e}", path.display())))?;
            removed.push(name);
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

/// `bpf_fib_lookup` answers FWD_DISABLED for IPv6 unless forwarding is on for the
/// interface (`idev->cnf.forwarding`, net/core/filter.c `bpf_ipv6_fib_lookup`).
fn check_ipv6_forwarding(iface: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/forwarding");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => Err(DataplaneError::Host(format!(
            "IPv6 forwarding is off on {iface}, and the config has IPv6 VIPs or origins: the kernel FIB refuses to route their rewritten packets; enable it with `sysctl -w net.ipv6.conf.all.forwarding=1` (and net.ipv6.conf.{iface}.accept_ra=2 if this interface takes its address or routes from router advertisements)"
        ))),
        Err(_) => Err(DataplaneError::Host(format!(
            "IPv6 is off on {iface} (no {path}), and the config has IPv6 VIPs or origins; enable IPv6 (net.ipv6.conf.{iface}.disable_ipv6=0, or boot without ipv6.disable=1)"
        ))),
    }
}

/// Checks host settings the data path depends on; returns warnings for soft problems and
/// an error for hard ones. IPv6 forwarding is required only when `cfg` has an IPv6 VIP or
/// origin (`Config::uses_ipv6`): turning it on changes how the host treats router
/// advertisements (`accept_ra` 1 is ignored on a forwarding interface), which a host that
/// balances only IPv4 should not have to take.
pub fn check_host(cfg: &config::Config) -> Result<Vec<String>> {
    let dp = &cfg.dataplane;
    let mut warnings = Vec::new();
    let ipv6 = cfg.uses_ipv6();
    for (i, iface) in dp.interfaces.iter().enumerate() {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
        match fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                return Err(DataplaneError::Host(format!(
                    "IPv4 forwarding is off on {iface}, so the kernel FIB refuses to route rewritten packets; enable it with `sysctl -w net.ipv4.conf.all.forwarding=1` (or net.ipv4.conf.{iface}.forwarding)"
                )))
            }
            Err(_) => {
                return Err(DataplaneError::Host(format!(
                    "dataplane.interfaces[{i}]: interface \"{iface}\" does not exist in this network namespace (no {path}); list interfaces that `ip link` shows here, or create it first"
                )))
            }
        }
        if ipv6 {
            check_ipv6_forwarding(iface)?;
        }
    }
    if let Ok(range) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let mut it = range
            .split_whitespace()
            .filter_map(|x| x.parse::<u16>().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            if dp.snat_port_min <= hi && dp.snat_port_max >= lo {
                warnings.push(format!(
                    "dataplane.snat_ports [{}, {}] overlaps the host's ephemeral ports [{lo}, {hi}] (net.ipv4.ip_local_port_range); if snat_address is a host address, the host's own connections to origins may collide with SNAT flows",
                    dp.snat_port_min, dp.snat_port_max
                ));
            }
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// `check_host` in a namespace of the test's own (needs root, as the data path's tests
    /// do): IPv4 forwarding always, IPv6 forwarding only for a config with IPv6.
    #[test]
    fn ipv6_forwarding_is_required_only_with_ipv6_vips_or_origins() {
        let ns = format!("lbfw{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {ns} failed (needs root and iproute2)");
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _guard = Ns(ns.clone());
        let cfg = |vip: &str, origin: &str| {
            let text = format!(
                "[dataplane]\ninterfaces = [\"lo\"]\nsnat_address = [\"10.0.0.1\", \"2001:db8:ff::1\"]\n\n[[pools]]\nname = \"p\"\norigins = [{{ name = \"o\", address = \"{origin}\" }}]\n\n[[load_balancers]]\nname = \"l\"\naddress = \"{vip}\"\nport = 80\ndefault_pools = [\"p\"]\n"
            );
            config::Config::parse(&text, Path::new("t")).expect("valid")
        };
        let v4 = cfg("10.0.0.10", "10.0.2.2");
        let v6 = cfg("2001:db8::10", "2001:db8:2::2");
        // On a thread of our own that enters the namespace: /proc/sys/net is the opener's.
        std::thread::spawn(move || {
            let f = fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let set = |path: &str, v: &str| fs::write(path, v).expect(path);
            set("/proc/sys/net/ipv4/conf/all/forwarding", "1");
            set("/proc/sys/net/ipv6/conf/all/forwarding", "0");
            check_host(&v4).expect("IPv4 only: IPv6 forwarding not needed");
            let e = check_host(&v6)
                .expect_err("IPv6 forwarding off")
                .to_string();
            assert!(
                e.contains("sysctl -w net.ipv6.conf.all.forwarding=1"),
                "{e}"
            );
            set("/proc/sys/net/ipv6/conf/all/forwarding", "1");
            check_host(&v6).expect("IPv6 forwarding on");
        })
        .join()
        .expect("check thread");
    }
}
