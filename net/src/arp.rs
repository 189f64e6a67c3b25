//! Gratuitous ARP: a node that takes over an address tells the link at once, so
//! neighbours (the router, the host of a lab) send to its MAC without waiting for their
//! ARP entries to go stale, as MetalLB's layer-2 mode and keepalived do.

use std::io;
use std::net::Ipv4Addr;

const ETH_P_ARP: u16 = 0x0806;

/// The ARP request announcing `ip` at `mac` (sender and target both `ip`), in an
/// Ethernet broadcast frame.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The MAC address of link `index`, in the calling thread's network namespace.
pub fn mac_of(index: u32) -> io::Result<[u8; 6]> {
    // SAFETY: a datagram socket only used for the ioctls below, closed by Fd.
    let s = Fd(check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?);
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = index as i32;
    // SAFETY: SIOCGIFNAME fills ifr_name for the index set above.
    check(unsafe { libc::ioctl(s.0, libc::SIOCGIFNAME, &mut req) })?;
    // SAFETY: SIOCGIFHWADDR reads the name filled above and writes ifru_hwaddr.
    check(unsafe { libc::ioctl(s.0, libc::SIOCGIFHWADDR, &mut req) })?;
    // SAFETY: the kernel filled ifru_hwaddr for SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// Sends `count` gratuitous ARPs for `ip` out of link `index`.
pub fn announce(index: u32, ip: Ipv4Addr, count: usize) -> io::Result<()> {
    let mac = mac_of(index)?;
    let f = frame(mac, ip);
    // SAFETY: a packet socket for ARP frames, closed by Fd.
    let s = Fd(check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    })?);
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..count.max(1) {
        // SAFETY: sending a live buffer to a sockaddr_ll of the size passed.
        check(unsafe {
            libc::sendto(
                s.0,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        } as i32)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_announces_the_address_at_the_mac() {
        let f = frame([2, 0, 0, 0, 0, 9], Ipv4Addr::new(192, 168, 56, 240));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&f[28..32], &[192, 168, 56, 240]);
        assert_eq!(&f[38..42], &[192, 168, 56, 240], "sender and target alike");
    }
}
