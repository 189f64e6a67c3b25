//! Segmentation offload for the udp backend. The TUN device is opened with a
//! `virtio_net_hdr` in front of each packet and TSO allowed, so the kernel hands over a
//! pod's TCP data in super-packets of up to 64 KiB instead of one MTU-sized packet per
//! read; here they are cut back into the MTU-sized IP packets a pod would have sent
//! (what a NIC does in hardware), with their checksums, before they go out one per UDP
//! datagram. The same trick makes wireguard-go and Tailscale fast in userspace.

/// `struct virtio_net_hdr` as TUN writes it (little-endian on the machines we run on).
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }
}

/// What to do with one packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the packet as it is now (its checksum completed if it was partial).
    One,
    /// The packet was cut into segments of `size` bytes (the last may be shorter),
    /// written one after another into the output buffer.
    Segments { size: usize, count: usize },
    /// Not something we can carry (a GSO type other than TCPv4, bad offsets).
    Unsupported,
}

/// Ones'-complement sum of `b` (16-bit big-endian words), not folded.
fn sum(b: &[u8], mut acc: u64) -> u64 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 header checksum of `ip` (with its checksum field zero).
fn ip_checksum(ip: &[u8]) -> u16 {
    !fold(sum(ip, 0))
}

/// Fills in the checksum of a TCP segment inside IPv4 packet `pkt`.
fn set_tcp_checksum(pkt: &mut [u8], ihl: usize) {
    let len = pkt.len() - ihl;
    pkt[ihl + 16] = 0;
    pkt[ihl + 17] = 0;
    let mut acc = sum(&pkt[12..20], 0); // source and destination
    acc += 6 + len as u64;
    acc = sum(&pkt[ihl..], acc);
    let c = !fold(acc);
    pkt[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
}

/// Handles one packet read from the TUN: `pkt` follows header `h`. A partial checksum
/// is completed in place; a TCPv4 super-packet is cut into `out`.
pub fn prepare(h: &VnetHdr, pkt: &mut [u8], out: &mut Vec<u8>) -> Outcome {
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            if h.flags & F_NEEDS_CSUM != 0 {
                let (start, at) = (
                    usize::from(h.csum_start),
                    usize::from(h.csum_start) + usize::from(h.csum_offset),
                );
                if at + 2 > pkt.len() {
                    return Outcome::Unsupported;
                }
                // The field holds the pseudo-header sum; the kernel leaves the rest to us.
                let c = !fold(sum(&pkt[start..], 0));
                pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            Outcome::One
        }
        GSO_TCPV4 => segment_tcp4(pkt, usize::from(h.gso_size), out),
        _ => Outcome::Unsupported,
    }
}

/// Cuts a TCPv4 super-packet into segments of at most `mss` payload bytes each, with
/// their own IP ID, length, sequence number and checksums, as TSO hardware does.
fn segment_tcp4(pkt: &[u8], mss: usize, out: &mut Vec<u8>) -> Outcome {
    if pkt.len() < 40 || pkt[0] >> 4 != 4 || mss == 0 {
        return Outcome::Unsupported;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl + 20 || pkt[9] != 6 {
        return Outcome::Unsupported;
    }
    let hl = ihl + usize::from(pkt[ihl + 12] >> 4) * 4;
    if hl > pkt.len() {
        return Outcome::Unsupported;
    }
    let payload = &pkt[hl..];
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags = pkt[ihl + 13];
    let count = payload.len().div_ceil(mss).max(1);
    out.clear();
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let start = out.len();
        out.extend_from_slice(&pkt[..hl]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let total = (hl + chunk.len()) as u16;
        seg[2..4].copy_from_slice(&total.to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        seg[10] = 0;
        seg[11] = 0;
        let c = ip_checksum(&seg[..ihl]);
        seg[10..12].copy_from_slice(&c.to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[ihl + 13] = f;
        set_tcp_checksum(seg, ihl);
    }
    Outcome::Segments {
        size: hl + mss,
        count,
    }
}

/// Merges consecutive TCP segments of one flow, as received from a peer, back into one
/// super-packet written to the TUN with a GSO header (what GRO does in a NIC driver), so
/// the kernel forwards and delivers 64 KiB at a time instead of one MTU each.
#[derive(Default)]
pub struct Coalescer {
    buf: Vec<u8>,
    hl: usize,
    mss: usize,
    count: usize,
    /// Whether more segments may still be appended.
    open: bool,
}

const TCP_ACK: u8 = 0x10;

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `pkt` (a checked IPv4 packet); false if it does not continue the packet
    /// being built (the caller then writes that one out and starts again).
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        if self.count == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(pkt);
            self.count = 1;
            self.open = false;
            if pkt[0] == 0x45 && pkt[9] == 6 && pkt.len() >= 40 {
                let hl = 20 + usize::from(pkt[32] >> 4) * 4;
                // Bulk data: a plain ACK with payload and no IP fragmentation.
                if hl >= 40
                    && hl < pkt.len()
                    && pkt[33] == TCP_ACK
                    && pkt[6] & 0x3f == 0
                    && pkt[7] == 0
                {
                    self.hl = hl;
                    self.mss = pkt.len() - hl;
                    self.open = true;
                }
            }
            return true;
        }
        if !self.open || pkt.len() <= self.hl || pkt[0] != 0x45 {
            return false;
        }
        let (f, hl) = (&self.buf, self.hl);
        let plen = pkt.len() - hl;
        let seq = |b: &[u8]| u32::from_be_bytes([b[24], b[25], b[26], b[27]]);
        let same = f[1] == pkt[1]
            && f[6..10] == pkt[6..10]
            && f[12..24] == pkt[12..24]
            && f[28..33] == pkt[28..33]
            && f[34..36] == pkt[34..36]
            && f[38..hl] == pkt[38..hl]
            && (pkt[33] == TCP_ACK || pkt[33] == TCP_ACK | TCP_PSH);
        let next = seq(f).wrapping_add((f.len() - hl) as u32) == seq(pkt);
        if !same || !next || plen > self.mss || f.len() + plen > 65_535 {
            return false;
        }
        self.buf.extend_from_slice(&pkt[hl..]);
        self.count += 1;
        if pkt[33] & TCP_PSH != 0 {
            self.buf[33] |= TCP_PSH;
            self.open = false;
        }
        if plen < self.mss {
            self.open = false;
        }
        true
    }

    /// The packet to write and its `virtio_net_hdr`; empties the coalescer.
    pub fn take(&mut self) -> ([u8; VNET_HDR_LEN], &[u8]) {
        let count = std::mem::take(&mut self.count);
        if count <= 1 {
            return ([0; VNET_HDR_LEN], &self.buf);
        }
        let b = &mut self.buf;
        let total = b.len() as u16;
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[10] = 0;
        b[11] = 0;
        let c = ip_checksum(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        // A partial checksum: the pseudo-header sum, the rest left to whoever needs it.
        let mut acc = sum(&b[12..20], 0);
        acc += 6 + (b.len() - 20) as u64;
        b[36..38].copy_from_slice(&fold(acc).to_be_bytes());
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = F_NEEDS_CSUM;
        h[1] = GSO_TCPV4;
        h[2..4].copy_from_slice(&(self.hl as u16).to_le_bytes());
        h[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
        h[6..8].copy_from_slice(&20u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        (h, &self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet 10.244.1.5:40000 -> 10.244.2.7:8080 with `payload`.
    fn tcp_packet(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&8080u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p.extend_from_slice(payload);
        p
    }

    fn valid(seg: &[u8]) -> bool {
        let ihl = usize::from(seg[0] & 0x0f) * 4;
        let ip_ok = fold(sum(&seg[..ihl], 0)) == 0xffff;
        let mut acc = sum(&seg[12..20], 0);
        acc += 6 + (seg.len() - ihl) as u64;
        let tcp_ok = fold(sum(&seg[ihl..], acc)) == 0xffff;
        ip_ok && tcp_ok
    }

    #[test]
    fn super_packets_become_valid_mss_sized_segments() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut pkt = tcp_packet(&payload, 0x18 | TCP_FIN);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        let r = prepare(&h, &mut pkt, &mut out);
        assert_eq!(
            r,
            Outcome::Segments {
                size: 1440,
                count: 3
            }
        );
        let segs: Vec<&[u8]> = out.chunks(1440).collect();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[2].len(), 40 + 200);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} checksums");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + 1400 * i as u32);
            let last = i == 2;
            assert_eq!(s[33] & TCP_FIN != 0, last, "FIN only on the last");
            assert_eq!(s[33] & TCP_PSH != 0, last, "PSH only on the last");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn segments_of_one_flow_coalesce_back_into_a_gso_packet() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 241) as u8).collect();
        let mut pkt = tcp_packet(&payload, TCP_ACK | TCP_PSH);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        prepare(&h, &mut pkt, &mut out);
        let mut c = Coalescer::default();
        for s in out.chunks(1440) {
            assert!(c.push(s));
        }
        let (vh, merged) = c.take();
        let vh = VnetHdr::parse(&vh).unwrap();
        assert_eq!(
            (vh.gso_type, vh.gso_size, vh.csum_start, vh.csum_offset),
            (GSO_TCPV4, 1400, 20, 16)
        );
        assert_eq!(&merged[40..], &payload[..]);
        assert_eq!(
            u16::from_be_bytes([merged[2], merged[3]]) as usize,
            merged.len()
        );
        assert_eq!(fold(sum(&merged[..20], 0)), 0xffff, "IP checksum");
        assert_eq!(merged[33], TCP_ACK | TCP_PSH);
        assert!(c.is_empty());

        // Another flow, or a gap in the sequence, starts a new packet.
        let a = tcp_packet(&[1; 100], TCP_ACK);
        let mut b = tcp_packet(&[2; 100], TCP_ACK);
        b[24..28].copy_from_slice(&5000u32.to_be_bytes());
        assert!(c.push(&a));
        assert!(!c.push(&b));
        let (vh, one) = c.take();
        assert_eq!(vh, [0; VNET_HDR_LEN], "a lone segment goes as it came");
        assert_eq!(one, &a[..]);
        let syn = tcp_packet(&[], 0x02);
        assert!(c.push(&syn));
        assert!(!c.push(&a), "nothing joins a SYN");
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut pkt = tcp_packet(b"hello", 0x18);
        // What the kernel leaves: the pseudo-header sum in the checksum field.
        let mut acc = sum(&pkt[12..20], 0);
        acc += 6 + 25;
        let partial = fold(acc);
        pkt[36..38].copy_from_slice(&partial.to_be_bytes());
        let ipc = ip_checksum(&pkt[..20]);
        pkt[10..12].copy_from_slice(&ipc.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(prepare(&h, &mut pkt, &mut Vec::new()), Outcome::One);
        assert!(valid(&pkt));
    }

    #[test]
    fn other_gso_types_and_bad_offsets_are_refused() {
        let mut pkt = tcp_packet(b"x", 0x10);
        let udp = VnetHdr {
            flags: 0,
            gso_type: 3,
            gso_size: 1000,
            csum_start: 0,
            csum_offset: 0,
        };
        assert_eq!(
            prepare(&udp, &mut pkt, &mut Vec::new()),
            Outcome::Unsupported
        );
        let bad = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            gso_size: 0,
            csum_start: 40,
            csum_offset: 100,
        };
        assert_eq!(
            prepare(&bad, &mut pkt, &mut Vec::new()),
            Outcome::Unsupported
        );
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }
}
