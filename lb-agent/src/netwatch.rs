//! Watches the kernel's links, IPv4 and IPv6 routes, addresses and neighbours (rtnetlink multicast
//! groups), so that the reconciler can bump `Settings::nh_gen` and the data path looks up the
//! next hops it caches per flow (`lb_common::NextHop`) again. Without a notification a
//! cached next hop still lives at most `NH_MAX_AGE` seconds; with one, a route, MTU or MAC
//! change reaches established flows within milliseconds.
//!
//! The messages are not parsed: any change in these groups is reason enough to look again,
//! and a lost notification (the socket's buffer overran, ENOBUFS) is one too. The same
//! changes refresh the host's own addresses in `LOCAL_ADDRS` (`local_addrs`).

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

#[cfg(test)]
use lb_common::addr16;
use lb_common::v4_mapped;

use tokio::io::unix::AsyncFd;

/// rtnetlink multicast groups (linux/rtnetlink.h, the legacy `RTMGRP_*` bit masks).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// The host's IPv4 and IPv6 addresses (IPv4 ones IPv4-mapped, IPv6 ones native, as the
/// data path keys them), from getifaddrs(3) in the calling thread's network namespace.
/// Link-local IPv6 addresses are the host's too, and listed.
pub fn local_addrs() -> io::Result<BTreeSet<[u8; 16]>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        // SAFETY: ifa_addr is null or points at a sockaddr whose family says its type.
        if !ifa.ifa_addr.is_null()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            out.insert(v4_mapped(sin.sin_addr.s_addr.to_ne_bytes()));
        } else if !ifa.ifa_addr.is_null()
            // SAFETY: as above.
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET6
        {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
            let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
            out.insert(sin6.sin6_addr.s6_addr);
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// An rtnetlink socket subscribed to the groups that can change a next hop.
pub struct NetWatch {
    fd: AsyncFd<OwnedFd>,
    /// Where messages are read to (and dropped): kept, as `changed` is called in a loop.
    buf: Vec<u8>,
}

impl NetWatch {
    /// Opens the socket. Needs a tokio runtime.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        #[expect(clippy::cast_possible_truncation, reason = "AF_NETLINK is 16")]
        {
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        }
        addr.nl_groups = RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                #[expect(clippy::cast_possible_truncation, reason = "12 bytes")]
                {
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t
                },
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the descriptor (OwnedFd), which stays open and unchanged
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Self {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits until something changed, then reads every pending message; returns how many
    /// were read (an overrun counts as one). Cancel-safe: nothing is read before the only
    /// await.
    pub async fn changed(&mut self) -> io::Result<usize> {
        let buf = &mut self.buf;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut n = 0;
            loop {
                // SAFETY: buf is valid for its length; MSG_DONTWAIT on a non-blocking socket.
                let rc = unsafe {
                    libc::recv(
                        guard.get_inner().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if rc >= 0 {
                    n += 1;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => {}
                    // Messages were lost: something changed.
                    Some(libc::ENOBUFS) => n += 1,
                    _ => return Err(e),
                }
            }
            guard.clear_ready();
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A link change in a network namespace of the test's own is noticed (needs root, as
    /// the data path's tests do).
    #[test]
    fn route_change_is_noticed() {
        let ns = format!("lbnw{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {} failed (needs root and iproute2)", args.join(" "));
        };
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        ip(&["netns", "add", &ns]);
        let _guard = Ns(ns.clone());
        // Enter the namespace on a thread of our own, so the socket lives there.
        let ns2 = ns.clone();
        let seen = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns2}")).expect("netns file");
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut w = NetWatch::open().expect("netlink socket");
                let quiet = tokio::time::timeout(Duration::from_millis(200), w.changed()).await;
                assert!(quiet.is_err(), "no change yet, but {quiet:?}");
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("ip link set lo up");
                assert!(up.success());
                tokio::time::timeout(Duration::from_secs(5), w.changed())
                    .await
                    .expect("a link change within 5 s")
                    .expect("reading the netlink socket")
            })
        })
        .join()
        .expect("watch thread");
        assert!(seen >= 1);
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addrs = local_addrs().expect("getifaddrs");
        assert!(
            addrs.contains(&v4_mapped([127, 0, 0, 1])),
            "127.0.0.1 among {addrs:?}"
        );
        // ::1 is there unless IPv6 is off on this host.
        let v6_on = std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
            .is_ok_and(|s| s.trim() == "0");
        if v6_on {
            assert!(
                addrs.contains(&addr16(std::net::Ipv6Addr::LOCALHOST.into())),
                "::1 among {addrs:?}"
            );
        }
    }
}
