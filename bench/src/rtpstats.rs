//! Reception statistics of one RTP leg, as RFC 3550 defines them: loss from extended sequence
//! numbers (A.1, A.3), interarrival jitter (A.8), plus the longest silence between two packets
//! (the media gap a failover causes). Pure arithmetic on arrival times, so it is tested
//! without sockets; times are nanoseconds on any clock that does not jump.

/// RTP clock of G.711 and telephone-events.
const CLOCK_HZ: f64 = 8000.0;

#[derive(Debug, Clone, Default)]
pub struct RxStats {
    received: u64,
    /// Expected and received of earlier SSRCs (a standby taking over may start a new one).
    expected_before: u64,
    received_before: u64,
    source: Option<Source>,
    /// RFC 3550 jitter in timestamp units.
    jitter: f64,
    jitter_max: f64,
    prev_transit: Option<f64>,
    first_arrival: Option<i64>,
    last_arrival: Option<i64>,
    max_gap_ns: i64,
    reordered: u64,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    base_seq: u16,
    max_seq: u16,
    cycles: u64,
    received: u64,
}

/// What one packet changed, for gap events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Silence before this packet, if it is not the first.
    pub gap_ns: Option<i64>,
}

/// A leg's figures when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegReport {
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub jitter_ms: f64,
    pub jitter_max_ms: f64,
    /// Longest silence between two packets, or from the last packet to the end of the leg.
    pub max_gap_ms: f64,
    /// From the start of the leg's media to its first packet.
    pub first_packet_ms: Option<f64>,
    pub sent: u64,
    pub reordered: u64,
}

impl RxStats {
    /// Accounts one packet arriving at `arrival_ns`. `audio` is false for telephone-events,
    /// whose timestamps stay fixed for a whole key press and would read as jitter.
    pub fn on_packet(
        &mut self,
        arrival_ns: i64,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        marker: bool,
        audio: bool,
    ) -> Arrival {
        self.received += 1;
        let gap_ns = self.last_arrival.map(|last| arrival_ns - last);
        if let Some(gap) = gap_ns {
            self.max_gap_ns = self.max_gap_ns.max(gap);
        }
        self.first_arrival.get_or_insert(arrival_ns);
        // Out-of-order datagrams must not move the clock backwards.
        self.last_arrival = Some(self.last_arrival.map_or(arrival_ns, |l| l.max(arrival_ns)));

        let new_source = self.source.is_none_or(|s| s.ssrc != ssrc);
        if new_source {
            if let Some(old) = self.source.take() {
                self.expected_before += old.expected();
                self.received_before += old.received;
            }
            self.source = Some(Source {
                ssrc,
                base_seq: seq,
                max_seq: seq,
                cycles: 0,
                received: 1,
            });
            self.prev_transit = None;
        } else if let Some(s) = self.source.as_mut() {
            s.received += 1;
            let delta = seq.wrapping_sub(s.max_seq);
            if delta == 0 || delta >= 0x8000 {
                // A duplicate or a late packet: counted as received, not advancing.
                self.reordered += 1;
            } else {
                if seq < s.max_seq {
                    s.cycles += 1 << 16;
                }
                s.max_seq = seq;
            }
        }

        if audio {
            let arrival_units = arrival_ns as f64 * CLOCK_HZ / 1e9;
            let transit = arrival_units - f64::from(timestamp);
            // The marker starts a talkspurt (a new source behind the same SSRC): its timestamp
            // jump is not network jitter.
            if let (Some(prev), false) = (self.prev_transit, marker) {
                let d = (transit - prev).abs();
                self.jitter += (d - self.jitter) / 16.0;
                self.jitter_max = self.jitter_max.max(self.jitter);
            }
            self.prev_transit = Some(transit);
        }
        Arrival { gap_ns }
    }

    /// The leg's figures at `end_ns`; `media_start_ns` is when it started expecting audio.
    pub fn report(&self, media_start_ns: i64, end_ns: i64, sent: u64) -> LegReport {
        let (expected_now, received_now) =
            self.source.map_or((0, 0), |s| (s.expected(), s.received));
        let expected = self.expected_before + expected_now;
        let received = self.received_before + received_now;
        let trailing = self.last_arrival.map_or(0, |l| end_ns - l);
        let ms = |ns: i64| ns as f64 / 1e6;
        LegReport {
            received: self.received,
            expected,
            lost: expected.saturating_sub(received),
            jitter_ms: self.jitter / CLOCK_HZ * 1000.0,
            jitter_max_ms: self.jitter_max / CLOCK_HZ * 1000.0,
            max_gap_ms: ms(self.max_gap_ns.max(trailing)),
            first_packet_ms: self.first_arrival.map(|f| ms((f - media_start_ns).max(0))),
            sent,
            reordered: self.reordered,
        }
    }

    pub fn last_arrival(&self) -> Option<i64> {
        self.last_arrival
    }
}

impl Source {
    fn expected(&self) -> u64 {
        self.cycles + u64::from(self.max_seq) - u64::from(self.base_seq) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn feed(stats: &mut RxStats, packets: &[(i64, u16, u32)]) {
        for &(at, seq, ts) in packets {
            stats.on_packet(at, seq, ts, 7, false, true);
        }
    }

    #[test]
    fn perfect_stream_has_no_loss_or_jitter() {
        let mut s = RxStats::default();
        let packets: Vec<_> = (0..100u16)
            .map(|i| (i64::from(i) * 20 * MS, i, u32::from(i) * 160))
            .collect();
        feed(&mut s, &packets);
        let r = s.report(0, 99 * 20 * MS, 100);
        assert_eq!((r.received, r.expected, r.lost), (100, 100, 0));
        assert!(r.jitter_ms.abs() < 1e-9);
        assert!((r.max_gap_ms - 20.0).abs() < 1e-9);
        assert_eq!(r.first_packet_ms, Some(0.0));
    }

    #[test]
    fn loss_and_wrap_are_counted() {
        let mut s = RxStats::default();
        // Sequence numbers wrap at 65535; two packets (65535 and 2) are lost.
        let seqs = [65532u16, 65533, 65534, 0, 1, 3];
        for (i, seq) in seqs.iter().enumerate() {
            s.on_packet(i as i64 * 20 * MS, *seq, i as u32 * 160, 1, false, true);
        }
        let r = s.report(0, 200 * MS, 0);
        assert_eq!(r.expected, 8);
        assert_eq!(r.received, 6);
        assert_eq!(r.lost, 2);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = RxStats::default();
        // Every other packet 4 ms late: |D| = 4 ms = 32 units each step after the first.
        for i in 0..2000u16 {
            let late = if i % 2 == 1 { 4 * MS } else { 0 };
            s.on_packet(
                i64::from(i) * 20 * MS + late,
                i,
                u32::from(i) * 160,
                1,
                false,
                true,
            );
        }
        let r = s.report(0, 40_000 * MS, 0);
        assert!((r.jitter_ms - 4.0).abs() < 0.05, "{}", r.jitter_ms);
    }

    #[test]
    fn gaps_include_silence_to_the_end() {
        let mut s = RxStats::default();
        feed(&mut s, &[(0, 1, 0), (20 * MS, 2, 160), (700 * MS, 3, 320)]);
        assert_eq!(s.report(0, 720 * MS, 0).max_gap_ms, 680.0);
        // A leg whose audio stopped: the silence up to its end is the gap.
        assert_eq!(s.report(0, 2_000 * MS, 0).max_gap_ms, 1_300.0);
    }

    #[test]
    fn new_ssrc_keeps_earlier_counts() {
        let mut s = RxStats::default();
        for i in 0..10u16 {
            s.on_packet(i64::from(i) * 20 * MS, i, 0, 1, false, true);
        }
        // A standby takes over with its own SSRC and sequence; one of its packets is lost.
        for (k, seq) in [500u16, 501, 503].iter().enumerate() {
            s.on_packet((300 + k as i64 * 20) * MS, *seq, 0, 2, false, true);
        }
        let r = s.report(0, 400 * MS, 0);
        assert_eq!((r.expected, r.received, r.lost), (14, 13, 1));
        assert_eq!(r.max_gap_ms, 120.0);
    }

    #[test]
    fn duplicates_are_not_loss() {
        let mut s = RxStats::default();
        feed(&mut s, &[(0, 1, 0), (20 * MS, 2, 160), (21 * MS, 2, 160)]);
        let r = s.report(0, 40 * MS, 0);
        assert_eq!((r.expected, r.lost, r.reordered), (2, 0, 1));
    }
}
