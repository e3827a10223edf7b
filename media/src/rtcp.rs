//! RTCP (RFC 3550 §6): reception statistics per leg (loss per A.3, interarrival jitter per A.8),
//! building our compound SR/RR + SDES reports, and parsing what the far end reports.
//!
//! Everything works on caller-provided buffers; nothing allocates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sequence-number validation constants of RFC 3550 A.1.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u32 = 2;
const SEQ_MOD: u64 = 1 << 16;

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const REPORT_BLOCK_LEN: usize = 24;

/// Statistics on one received RTP stream, kept per RFC 3550 A.1, A.3 and A.8. A new SSRC (the
/// phone restarted its stream) starts a new source; call-long totals carry over.
#[derive(Debug, Clone, Default)]
pub struct ReceptionStats {
    source: Option<u32>,
    max_seq: u16,
    /// Sequence-number wrap count, shifted (A.1 `cycles`).
    cycles: u64,
    base_seq: u64,
    bad_seq: u64,
    probation: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Relative transit time of the last audio packet, in timestamp units.
    transit: Option<u32>,
    /// Interarrival jitter in timestamp units, scaled by 16 (A.8).
    jitter16: u32,
    /// Totals of earlier sources.
    carried_received: u64,
    carried_expected: u64,
}

/// The loss and jitter figures of one report block, as computed by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (negative with duplicates), 24-bit signed on the wire.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from `ssrc`, 0 if none.
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReceptionStats {
    /// Counts one RTP packet. `arrival` is the receive time in timestamp units (8 kHz) on any
    /// fixed origin; `audio` is false for telephone-events, whose packets share a timestamp and
    /// would distort jitter.
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival: u32, audio: bool) {
        if self.source != Some(ssrc) {
            if self.source.is_some() {
                self.carried_received += self.received;
                self.carried_expected += self.expected();
            }
            *self = Self {
                source: Some(ssrc),
                probation: MIN_SEQUENTIAL,
                max_seq: seq.wrapping_sub(1),
                carried_received: self.carried_received,
                carried_expected: self.carried_expected,
                ..Self::default()
            };
        }
        if !self.update_seq(seq) {
            return;
        }
        if audio {
            let transit = arrival.wrapping_sub(timestamp);
            if let Some(last) = self.transit {
                let d = (transit.wrapping_sub(last) as i32).unsigned_abs();
                // J += (|D| - J) / 16, in the integer form of A.8.
                self.jitter16 = self
                    .jitter16
                    .wrapping_add(d.min(1 << 24))
                    .wrapping_sub((self.jitter16 + 8) >> 4);
            }
            self.transit = Some(transit);
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u64::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq`: false when the packet is not (yet) counted.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: accept it only if the next packet follows it (a restart).
            if u64::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u64::from(seq) + 1) & (SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, max unchanged.
        self.received += 1;
        true
    }

    fn expected(&self) -> u64 {
        if self.source.is_none() || self.probation > 0 {
            return 0;
        }
        (self.cycles + u64::from(self.max_seq) + 1).saturating_sub(self.base_seq)
    }

    /// Packets received over the whole call (all sources).
    pub fn received(&self) -> u64 {
        self.carried_received + if self.probation > 0 { 0 } else { self.received }
    }

    /// Packets lost over the whole call (expected minus received; negative with duplicates).
    pub fn lost(&self) -> i64 {
        let expected = self.carried_expected + self.expected();
        expected as i64 - self.received() as i64
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter16 >> 4
    }

    /// The report block for the current source, advancing the "prior" counters (A.3), or
    /// `None` before a source is validated.
    pub fn report(&mut self) -> Option<ReportBlock> {
        let ssrc = self.source?;
        if self.probation > 0 {
            return None;
        }
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior.min(expected);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let cumulative = expected as i64 - self.received as i64;
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: cumulative.clamp(-(1 << 23), (1 << 23) - 1) as i32,
            highest_seq: (self.cycles + u64::from(self.max_seq)) as u32,
            jitter: self.jitter(),
            last_sr: 0,
            delay_since_last_sr: 0,
        })
    }
}

/// Sender information from an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ssrc: u32,
    /// Middle 32 bits of the 64-bit NTP timestamp (what a later report echoes as LSR).
    pub ntp_middle: u32,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// What one compound RTCP packet told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcpSummary {
    pub sender: Option<SenderInfo>,
    /// The report block about `our_ssrc`, if the far end sent one.
    pub about_us: Option<ReportBlock>,
}

/// Why a datagram is not a valid compound RTCP packet (RFC 3550 A.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    TooShort,
    BadVersion,
    /// The first packet of a compound packet must be an SR or RR.
    NotReportFirst,
    /// A length field that does not fit the datagram, or blocks that overflow their packet.
    BadLength,
    /// Padding on a packet other than the last.
    BadPadding,
}

/// Parses and validates a compound RTCP packet, picking out the sender info and the report
/// block about `our_ssrc`.
pub fn parse(datagram: &[u8], our_ssrc: u32) -> Result<RtcpSummary, RtcpError> {
    if datagram.len() < 8 {
        return Err(RtcpError::TooShort);
    }
    if !matches!(datagram[1], PT_SR | PT_RR) {
        return Err(RtcpError::NotReportFirst);
    }
    let mut summary = RtcpSummary::default();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::BadLength);
        }
        let b0 = rest[0];
        if b0 >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let packet = rest.get(..len).ok_or(RtcpError::BadLength)?;
        rest = &rest[len..];
        if b0 & 0x20 != 0 && !rest.is_empty() {
            return Err(RtcpError::BadPadding);
        }
        let count = usize::from(b0 & 0x1F);
        let blocks_at = match packet[1] {
            PT_SR => {
                let info = packet.get(4..28).ok_or(RtcpError::BadLength)?;
                summary.sender = Some(SenderInfo {
                    ssrc: be32(info, 0),
                    ntp_middle: be32(info, 6),
                    rtp_timestamp: be32(info, 12),
                    packets: be32(info, 16),
                    octets: be32(info, 20),
                });
                28
            }
            PT_RR => 8,
            _ => continue,
        };
        let blocks = packet
            .get(blocks_at..blocks_at + count * REPORT_BLOCK_LEN)
            .ok_or(RtcpError::BadLength)?;
        for block in blocks.chunks_exact(REPORT_BLOCK_LEN) {
            if be32(block, 0) == our_ssrc {
                // Sign-extend the 24-bit cumulative loss.
                let lost = (be32(block, 4) << 8) as i32 >> 8;
                summary.about_us = Some(ReportBlock {
                    ssrc: our_ssrc,
                    fraction_lost: block[4],
                    cumulative_lost: lost,
                    highest_seq: be32(block, 8),
                    jitter: be32(block, 12),
                    last_sr: be32(block, 16),
                    delay_since_last_sr: be32(block, 20),
                });
            }
        }
    }
    Ok(summary)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What we sent, for the sender info of our SR.
#[derive(Debug, Clone, Copy)]
pub struct SenderReport {
    /// Current time as a 64-bit NTP timestamp.
    pub ntp: u64,
    /// Our stream's RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// Room for an SR with one report block and an SDES CNAME.
pub const REPORT_MAX_LEN: usize = 28 + REPORT_BLOCK_LEN + 12 + 256;

/// Writes a compound report into `out`: an SR when `sender` is given (we sent RTP since the
/// last report), else an RR; with `block` when we receive a stream; then SDES with `cname`
/// (truncated to 255 bytes). Returns the length written. `out` must hold [`REPORT_MAX_LEN`].
pub fn write_report(
    out: &mut [u8],
    ssrc: u32,
    sender: Option<SenderReport>,
    block: Option<ReportBlock>,
    cname: &[u8],
) -> usize {
    let count = u8::from(block.is_some());
    let mut at = 8;
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[1] = if let Some(s) = sender {
        out[8..16].copy_from_slice(&s.ntp.to_be_bytes());
        out[16..20].copy_from_slice(&s.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&s.packets.to_be_bytes());
        out[24..28].copy_from_slice(&s.octets.to_be_bytes());
        at = 28;
        PT_SR
    } else {
        PT_RR
    };
    out[0] = 0x80 | count;
    if let Some(b) = block {
        let lost = (b.cumulative_lost as u32) & 0x00FF_FFFF;
        out[at..at + 4].copy_from_slice(&b.ssrc.to_be_bytes());
        out[at + 4..at + 8]
            .copy_from_slice(&(u32::from(b.fraction_lost) << 24 | lost).to_be_bytes());
        out[at + 8..at + 12].copy_from_slice(&b.highest_seq.to_be_bytes());
        out[at + 12..at + 16].copy_from_slice(&b.jitter.to_be_bytes());
        out[at + 16..at + 20].copy_from_slice(&b.last_sr.to_be_bytes());
        out[at + 20..at + 24].copy_from_slice(&b.delay_since_last_sr.to_be_bytes());
        at += REPORT_BLOCK_LEN;
    }
    write_length(out, 0, at);
    // SDES: one chunk with CNAME, then an END item, padded to a 32-bit boundary.
    let sdes = at;
    let name = &cname[..cname.len().min(255)];
    out[sdes] = 0x81;
    out[sdes + 1] = PT_SDES;
    out[sdes + 4..sdes + 8].copy_from_slice(&ssrc.to_be_bytes());
    out[sdes + 8] = 1;
    out[sdes + 9] = name.len() as u8;
    out[sdes + 10..sdes + 10 + name.len()].copy_from_slice(name);
    let mut end = sdes + 10 + name.len();
    // At least one zero octet ends the item list.
    let padded = (end + 1).next_multiple_of(4);
    out[end..padded].fill(0);
    end = padded;
    write_length(out, sdes, end);
    end
}

/// Sets the length field of the packet at `start` that ends at `end`.
fn write_length(out: &mut [u8], start: usize, end: usize) {
    let words = ((end - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// The current wall-clock time as a 64-bit NTP timestamp (seconds since 1900, 32.32 fixed).
pub fn ntp_now() -> u64 {
    const UNIX_TO_NTP: u64 = 2_208_988_800;
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    ((since.as_secs() + UNIX_TO_NTP) << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (units of 1/65536 s).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// `d` in units of 1/65536 s, saturating.
pub fn compact(d: Duration) -> u32 {
    u32::try_from(d.as_micros() * 65_536 / 1_000_000).unwrap_or(u32::MAX)
}

/// Round-trip time from a report block about our stream (RFC 3550 §6.4.1), `None` when the far
/// end has not received an SR from us yet.
pub fn round_trip(block: &ReportBlock, now_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = ntp_middle(now_ntp)
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    // A negative result (clock steps) is meaningless.
    (rtt < 1 << 31).then(|| Duration::from_micros(u64::from(rtt) * 1_000_000 / 65_536))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `seqs` 20 ms apart with `delays` of extra transit (in samples).
    fn feed(stats: &mut ReceptionStats, seqs: &[u16], delays: &[u32]) {
        for (i, &seq) in seqs.iter().enumerate() {
            let ts = u32::from(seq) * 160;
            let arrival = 1_000_000 + ts + delays.get(i).copied().unwrap_or(0);
            stats.on_packet(7, seq, ts, arrival, true);
        }
    }

    #[test]
    fn counts_loss_per_interval_and_in_total() {
        let mut s = ReceptionStats::default();
        let seqs: Vec<u16> = (100..200).filter(|n| n % 10 != 0).collect();
        feed(&mut s, &seqs, &[]);
        // 100 expected from 101 (the first validates the source) to 199: 9 of every 10 arrive.
        let r = s.report().unwrap();
        assert_eq!(r.ssrc, 7);
        assert_eq!(r.highest_seq, 199);
        assert_eq!(r.cumulative_lost, 9);
        assert_eq!(s.lost(), 9);
        assert_eq!(r.fraction_lost, (9 * 256 / 99) as u8);
        assert_eq!(r.jitter, 0);
        // No loss in the next interval, even across the sequence wrap.
        let mut next: Vec<u16> = (200..260).collect();
        next.extend((0..5).map(|i| 65_530 + i));
        feed(&mut s, &next, &[]);
        let mut s2 = s.clone();
        assert_eq!(s2.report().unwrap().fraction_lost, 0);
        let mut wrap = ReceptionStats::default();
        let seqs: Vec<u16> = (65_500..=65_535).chain(0..40).collect();
        feed(&mut wrap, &seqs, &[]);
        let r = wrap.report().unwrap();
        assert_eq!(r.highest_seq, (1 << 16) + 39);
        assert_eq!(r.cumulative_lost, 0);
    }

    #[test]
    fn jitter_follows_transit_variation() {
        let mut s = ReceptionStats::default();
        // Transit alternating 0 and 80 samples (10 ms): D = 80 every packet, J converges to 80.
        let seqs: Vec<u16> = (0..400).collect();
        let delays: Vec<u32> = (0..400).map(|i| if i % 2 == 0 { 0 } else { 80 }).collect();
        feed(&mut s, &seqs, &delays);
        assert!((76..=80).contains(&s.jitter()), "jitter {}", s.jitter());
        // Telephone-events do not move it.
        s.on_packet(7, 400, 0, 99, false);
        assert!((76..=80).contains(&s.jitter()));
    }

    #[test]
    fn new_ssrc_starts_a_new_source_keeping_totals() {
        let mut s = ReceptionStats::default();
        feed(&mut s, &[1, 2, 3, 5], &[]);
        assert_eq!((s.received(), s.lost()), (3, 1));
        for seq in 500..510u16 {
            s.on_packet(8, seq, 0, 0, true);
        }
        assert_eq!(s.report().unwrap().ssrc, 8);
        assert_eq!((s.received(), s.lost()), (3 + 9, 1));
    }

    #[test]
    fn report_round_trips_through_parse() {
        let mut buf = [0u8; REPORT_MAX_LEN];
        let block = ReportBlock {
            ssrc: 0xAB,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 41,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        };
        let sender = SenderReport {
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 160,
            packets: 10,
            octets: 1600,
        };
        let n = write_report(&mut buf, 0xCD, Some(sender), Some(block), b"sy@host");
        assert_eq!(n % 4, 0);
        let parsed = parse(&buf[..n], 0xAB).unwrap();
        assert_eq!(parsed.about_us, Some(block));
        assert_eq!(
            parsed.sender,
            Some(SenderInfo {
                ssrc: 0xCD,
                ntp_middle: 0x0304_0506,
                rtp_timestamp: 160,
                packets: 10,
                octets: 1600
            })
        );
        // An RR without blocks is valid too, and says nothing about us.
        let n = write_report(&mut buf, 0xCD, None, None, b"x");
        assert_eq!(parse(&buf[..n], 0xAB), Ok(RtcpSummary::default()));
    }

    #[test]
    fn rejects_invalid_compounds_without_panicking() {
        assert_eq!(parse(&[], 1), Err(RtcpError::TooShort));
        assert_eq!(
            parse(&[0x80, 202, 0, 1, 0, 0, 0, 0], 1),
            Err(RtcpError::NotReportFirst)
        );
        assert_eq!(
            parse(&[0x40, 201, 0, 1, 0, 0, 0, 0], 1),
            Err(RtcpError::BadVersion)
        );
        assert_eq!(
            parse(&[0x80, 201, 0, 9, 0, 0, 0, 0], 1),
            Err(RtcpError::BadLength)
        );
        // Claims one report block but has none.
        assert_eq!(
            parse(&[0x81, 201, 0, 1, 0, 0, 0, 0], 1),
            Err(RtcpError::BadLength)
        );
        let mut buf = [0u8; 64];
        for len in 0..buf.len() {
            for b in 0..=255u8 {
                buf[0] = 0x80 | (b & 0x3F);
                buf[1] = if b & 1 == 0 { 200 } else { 201 };
                buf[3] = b >> 2;
                buf[len.saturating_sub(1)] = b;
                let _ = parse(&buf[..len], 0);
            }
        }
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        let now = ntp_now();
        let block = ReportBlock {
            last_sr: ntp_middle(now).wrapping_sub(compact(Duration::from_millis(150))),
            delay_since_last_sr: compact(Duration::from_millis(100)),
            ..ReportBlock::default()
        };
        let rtt = round_trip(&block, now).unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1));
        assert_eq!(round_trip(&ReportBlock::default(), now), None);
    }
}
