//! Raw frames on an interface (`AF_PACKET`): what the fan-out test and
//! benchmark send into the router and capture behind it.

use std::os::fd::{AsRawFd, OwnedFd};

use shardcast_dataplane::ifindex;

/// A raw AF_PACKET socket on `iface` (all protocols), with a receive
/// timeout.
pub fn packet_socket(iface: &str) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned to us.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sockaddr_ll` is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex(iface).unwrap() as i32;
    // SAFETY: binds our socket to a valid `sockaddr_ll` of the right size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: SO_RCVTIMEO takes a `timeval` of this size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    sock
}

pub fn send_raw(sock: &OwnedFd, f: &[u8]) {
    // SAFETY: sends our buffer on our bound socket.
    let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    assert_eq!(
        n,
        f.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// UDP datagrams to a multicast MAC received on the socket until it has
/// been quiet for the timeout (frames the interface sent itself, and
/// anything else such as MLD, left out).
pub fn captured(sock: &OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `sockaddr_ll` is plain old data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: receives into our buffer and address of the given sizes.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return out;
        }
        let f = &buf[..n as usize];
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let multicast = f[0] & 1 == 1;
        let udp = match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => f.len() > 23 && f[23] == 17,
            0x86dd => f.len() > 20 && f[20] == 17,
            _ => false,
        };
        if multicast && udp {
            out.push(f.to_vec());
        }
    }
}
