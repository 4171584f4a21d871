//! Network interfaces: index and MAC address by name (ioctls), and the
//! root check.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::error::*;

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Index of `iface` in the current network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| DataplaneError::NoInterface(iface.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoInterface(iface.into())),
        i => Ok(i),
    }
}

/// MAC address of `iface` in the current network namespace
/// (`SIOCGIFHWADDR` on a socket opened here, so it works after `setns` too,
/// unlike /sys/class/net). One ioctl: `getifaddrs` dumps every link and
/// address over netlink, which took 4-67 ms of each plan install.
pub fn mac_address(iface: &str) -> Result<[u8; 6]> {
    let no_mac = |reason: String| DataplaneError::NoMac {
        iface: iface.into(),
        reason,
    };
    let name = iface.as_bytes();
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(DataplaneError::NoInterface(iface.into()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned (closed on drop).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(no_mac(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just returned to us and is not owned elsewhere.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes `ifr_hwaddr` of the
    // `ifreq` we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ENODEV) {
            DataplaneError::NoInterface(iface.into())
        } else {
            no_mac(e.to_string())
        });
    }
    // SAFETY: the ioctl filled the `ifru_hwaddr` member.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(no_mac(format!(
            "not an Ethernet device (link type {})",
            hw.sa_family
        )));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data) {
        *d = s as u8;
    }
    Ok(mac)
}

/// A UDP socket that sends multicast out of `iface` (chosen by index, so
/// it works on an interface without an address), with TTL or hop limit
/// `ttl` and no loopback to this host: how the control path (the gateway)
/// puts a publish into a shard's group on the shard's egress, as the data
/// plane does.
pub fn multicast_socket(iface: &str, v6: bool, ttl: u32) -> Result<std::net::UdpSocket> {
    let idx = ifindex(iface)?;
    let sock = if v6 {
        std::net::UdpSocket::bind("[::]:0")?
    } else {
        std::net::UdpSocket::bind("0.0.0.0:0")?
    };
    let fd = sock.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, val: *const libc::c_void, len: usize| {
        // SAFETY: setsockopt on our socket with a value of the stated size.
        if unsafe { libc::setsockopt(fd, level, name, val, len as libc::socklen_t) } < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let zero: libc::c_int = 0;
    let hops = ttl as libc::c_int;
    if v6 {
        let i = idx as libc::c_int;
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            (&raw const i).cast(),
            4,
        )?;
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            (&raw const hops).cast(),
            4,
        )?;
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_LOOP,
            (&raw const zero).cast(),
            4,
        )?;
    } else {
        let mreq = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: idx as libc::c_int,
        };
        set(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&raw const mreq).cast(),
            std::mem::size_of::<libc::ip_mreqn>(),
        )?;
        set(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            (&raw const hops).cast(),
            4,
        )?;
        set(
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            (&raw const zero).cast(),
            4,
        )?;
    }
    Ok(sock)
}

/// Has an IPv4 UDP socket send without a UDP checksum (zero: "none", RFC
/// 768; `SO_NO_CHECK`). A locally sent datagram otherwise leaves with its
/// checksum only started, for the NIC to finish; over a veth that
/// metadata does not survive an XDP redirect, and the rewritten copy
/// arrives with a wrong checksum. A zero checksum stays zero through the
/// router's rewrite (the latency probes use this).
pub fn udp_no_checksum(sock: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor the caller owns, with a pointer
    // to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
