//! The audio subset of SDP offer/answer (RFC 4566, RFC 3264) a B2BUA relaying G.711 needs:
//! find the first usable audio stream of an offer or answer, pick a codec in the offerer's
//! order, and write our own offers and answers.
//!
//! A small parser of our own rather than a crate (docs/adr/0002-sip-parsing-on-rsip.md): the
//! candidates pull in heavy dependencies or enforce RFC 4566 line order that real phones break,
//! and we only read `v= o= c= m=` and four kinds of `a=` line. Unknown lines are skipped, so
//! video, ICE or vendor attributes do not get in the way.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The G.711 codecs the media plane relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// The static RTP payload type (RFC 3551).
    pub fn static_payload_type(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 8,
        }
    }

    /// The rtpmap encoding name.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
        }
    }

    fn from_rtpmap(map: &RtpMap) -> Option<Self> {
        if map.clock_rate != 8000 || map.channels.is_some_and(|c| c != 1) {
            return None;
        }
        [Self::Pcmu, Self::Pcma]
            .into_iter()
            .find(|c| map.encoding.eq_ignore_ascii_case(c.encoding_name()))
    }
}

/// Media direction attribute; `sendrecv` when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute as written after `a=`.
    pub fn attribute(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    fn from_attribute(attribute: &str) -> Option<Self> {
        [
            Self::SendRecv,
            Self::SendOnly,
            Self::RecvOnly,
            Self::Inactive,
        ]
        .into_iter()
        .find(|d| d.attribute() == attribute)
    }

    fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// The direction to answer an offer of `self` with when we would like `local`
    /// (RFC 3264 §6.1): we only send what the offerer receives and vice versa.
    pub fn answer(self, local: Direction) -> Direction {
        match (
            local.sends() && self.receives(),
            local.receives() && self.sends(),
        ) {
            (true, true) => Self::SendRecv,
            (true, false) => Self::SendOnly,
            (false, true) => Self::RecvOnly,
            (false, false) => Self::Inactive,
        }
    }
}

/// An `a=rtpmap` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// An `m=` line as written, kept so an answer can list the same streams (RFC 3264 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub formats: String,
}

/// The first usable audio stream of a session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioDescription {
    /// Media-level `c=` address, else the session-level one.
    pub connection: IpAddr,
    pub port: u16,
    /// Formats of the m= line, in the sender's order of preference.
    pub payload_types: Vec<u8>,
    /// rtpmap lines of this stream for payload types it lists.
    pub rtpmap: Vec<RtpMap>,
    /// Payload type of `telephone-event/8000` (RFC 4733 DTMF), if offered.
    pub telephone_event_pt: Option<u8>,
    pub ptime: Option<u32>,
    /// Media-level direction, else session-level, else sendrecv.
    pub direction: Direction,
    /// Every m= line of the description, in order.
    pub media_lines: Vec<MediaLine>,
    /// Position of this stream in `media_lines`.
    pub audio_index: usize,
}

/// Why a body cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not a valid session description (answer 400).
    #[error("malformed SDP: {0}")]
    Malformed(&'static str),
    /// No audio stream over plain RTP with a non-zero port (answer 488).
    #[error("no usable audio stream")]
    NoAudio,
    /// Audio, but none of our codecs (answer 488).
    #[error("no common codec")]
    NoCommonCodec,
}

impl SdpError {
    /// The status code a request carrying such an offer is answered with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::NoAudio | Self::NoCommonCodec => 488,
        }
    }
}

/// Whether a Content-Type value is `application/sdp` (parameters and case ignored); anything
/// else gets 415 from the node.
pub fn is_sdp_content_type(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/sdp")
}

/// The codec chosen for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// Payload type the offer uses for it (static or dynamic).
    pub payload_type: u8,
    /// The offer's telephone-event payload type, to be echoed in the answer.
    pub telephone_event_pt: Option<u8>,
}

/// Picks the first payload type of `offer` that is one of `supported`, following the offerer's
/// order as RFC 3264 §6.1 asks. Static types 0 and 8 count without rtpmap; an rtpmap, when
/// present, decides what a payload type is.
pub fn negotiate(offer: &AudioDescription, supported: &[Codec]) -> Result<Negotiated, SdpError> {
    offer
        .payload_types
        .iter()
        .find_map(|&pt| {
            let codec = match offer.rtpmap.iter().find(|m| m.payload_type == pt) {
                Some(map) => Codec::from_rtpmap(map),
                None => [Codec::Pcmu, Codec::Pcma]
                    .into_iter()
                    .find(|c| c.static_payload_type() == pt),
            }?;
            supported.contains(&codec).then_some(Negotiated {
                codec,
                payload_type: pt,
                telephone_event_pt: offer.telephone_event_pt,
            })
        })
        .ok_or(SdpError::NoCommonCodec)
}

/// What we put in our own session descriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia<'a> {
    pub session_id: u64,
    /// Incremented on every new description within the session (RFC 3264 §8).
    pub version: u64,
    pub addr: IpAddr,
    pub port: u16,
    /// `(payload type, codec)` in our order of preference; must not be empty.
    pub codecs: &'a [(u8, Codec)],
    pub telephone_event_pt: Option<u8>,
    pub direction: Direction,
}

/// An offer with a single audio stream.
pub fn build(local: &LocalMedia<'_>) -> String {
    let mut sdp = session_part(local);
    audio_part(&mut sdp, local, local.direction);
    sdp
}

/// An answer to `offer`: the same m= lines in the same order (RFC 3264 §6), ours for the audio
/// stream and every other one rejected with port 0. The direction is `local.direction`
/// narrowed to what the offer allows.
pub fn build_answer(offer: &AudioDescription, local: &LocalMedia<'_>) -> String {
    let mut sdp = session_part(local);
    for (i, line) in offer.media_lines.iter().enumerate() {
        if i == offer.audio_index {
            audio_part(&mut sdp, local, offer.direction.answer(local.direction));
        } else {
            let _ = write!(
                sdp,
                "m={} 0 {} {}\r\n",
                line.media, line.proto, line.formats
            );
        }
    }
    sdp
}

fn session_part(local: &LocalMedia<'_>) -> String {
    let family = match local.addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let mut sdp = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\no=- {} {} IN {family} {addr}\r\ns=-\r\nc=IN {family} {addr}\r\nt=0 0\r\n",
        local.session_id,
        local.version,
        addr = local.addr,
    );
    sdp
}

fn audio_part(sdp: &mut String, local: &LocalMedia<'_>, direction: Direction) {
    let _ = write!(sdp, "m=audio {} RTP/AVP", local.port);
    for (pt, _) in local.codecs {
        let _ = write!(sdp, " {pt}");
    }
    if let Some(te) = local.telephone_event_pt {
        let _ = write!(sdp, " {te}");
    }
    sdp.push_str("\r\n");
    for (pt, codec) in local.codecs {
        let _ = write!(sdp, "a=rtpmap:{pt} {}/8000\r\n", codec.encoding_name());
    }
    if let Some(te) = local.telephone_event_pt {
        let _ = write!(
            sdp,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        );
    }
    let _ = write!(sdp, "a=ptime:20\r\na={}\r\n", direction.attribute());
}

/// One m= section while parsing.
struct Section {
    line: MediaLine,
    payload_types: Vec<u8>,
    connection: Option<IpAddr>,
    direction: Option<Direction>,
    rtpmap: Vec<RtpMap>,
    ptime: Option<u32>,
}

/// Parses a session description and returns its first usable audio stream: `m=audio` with a
/// non-zero port over RTP/AVP (or AVPF). Port-0 streams are rejected ones and are skipped; SRTP
/// profiles are skipped because the media plane does not do SRTP.
pub fn parse(sdp: &[u8]) -> Result<AudioDescription, SdpError> {
    let text = String::from_utf8_lossy(sdp);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim_end) != Some("v=0") {
        return Err(SdpError::Malformed("first line is not v=0"));
    }
    let mut origin = false;
    let mut session_connection = None;
    let mut session_direction = None;
    let mut sections: Vec<Section> = Vec::new();
    for line in lines {
        let line = line.trim_end();
        let (kind, value) = match line.as_bytes() {
            [kind, b'=', ..] if kind.is_ascii_lowercase() => (*kind, &line[2..]),
            _ => return Err(SdpError::Malformed("line is not <type>=<value>")),
        };
        match kind {
            b'o' => origin = true,
            b'c' => {
                let addr = parse_connection(value)?;
                match sections.last_mut() {
                    Some(section) => section.connection = Some(addr),
                    None => session_connection = Some(addr),
                }
            }
            b'm' => sections.push(parse_media(value)?),
            b'a' => {
                let Some(section) = sections.last_mut() else {
                    if let Some(direction) = Direction::from_attribute(value) {
                        session_direction = Some(direction);
                    }
                    continue;
                };
                parse_media_attribute(section, value)?;
            }
            _ => {}
        }
    }
    if !origin {
        return Err(SdpError::Malformed("no o= line"));
    }

    let media_lines: Vec<MediaLine> = sections.iter().map(|s| s.line.clone()).collect();
    let (audio_index, audio) = sections
        .into_iter()
        .enumerate()
        .find(|(_, s)| {
            s.line.media == "audio"
                && s.line.port != 0
                && matches!(s.line.proto.as_str(), "RTP/AVP" | "RTP/AVPF")
        })
        .ok_or(SdpError::NoAudio)?;
    let connection = audio
        .connection
        .or(session_connection)
        .ok_or(SdpError::Malformed("no c= line for the audio stream"))?;
    let rtpmap: Vec<RtpMap> = audio
        .rtpmap
        .into_iter()
        .filter(|m| audio.payload_types.contains(&m.payload_type))
        .collect();
    let telephone_event_pt = rtpmap
        .iter()
        .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000)
        .map(|m| m.payload_type);
    Ok(AudioDescription {
        connection,
        port: audio.line.port,
        payload_types: audio.payload_types,
        rtpmap,
        telephone_event_pt,
        ptime: audio.ptime,
        direction: audio.direction.or(session_direction).unwrap_or_default(),
        media_lines,
        audio_index,
    })
}

/// `IN IP4 192.0.2.1` (a multicast `/ttl` suffix is ignored).
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let mut parts = value.split_ascii_whitespace();
    let (Some("IN"), Some("IP4" | "IP6"), Some(addr), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SdpError::Malformed("c= is not IN IP4/IP6 <address>"));
    };
    let addr = addr.split('/').next().unwrap_or_default();
    addr.parse()
        .map_err(|_| SdpError::Malformed("c= address is not an IP address"))
}

/// `audio 49170[/2] RTP/AVP 0 8 101`.
fn parse_media(value: &str) -> Result<Section, SdpError> {
    const BAD: SdpError = SdpError::Malformed("m= is not <media> <port> <proto> <fmt>...");
    let mut parts = value.split_ascii_whitespace();
    let (Some(media), Some(port), Some(proto)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BAD);
    };
    let port = port
        .split('/')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(BAD)?;
    let formats: Vec<&str> = parts.collect();
    if formats.is_empty() {
        return Err(BAD);
    }
    let payload_types = if proto.starts_with("RTP/") {
        formats
            .iter()
            .map(|f| f.parse::<u8>().ok().filter(|&pt| pt <= 127))
            .collect::<Option<Vec<u8>>>()
            .ok_or(SdpError::Malformed("m= payload type is not 0-127"))?
    } else {
        Vec::new()
    };
    Ok(Section {
        line: MediaLine {
            media: media.to_owned(),
            port,
            proto: proto.to_owned(),
            formats: formats.join(" "),
        },
        payload_types,
        connection: None,
        direction: None,
        rtpmap: Vec::new(),
        ptime: None,
    })
}

fn parse_media_attribute(section: &mut Section, value: &str) -> Result<(), SdpError> {
    // Other streams are only answered with port 0, so their attributes do not matter, however
    // odd (RFC 4475 uses `a=rtpmap:31 LPC` for video).
    if section.line.media != "audio" {
        return Ok(());
    }
    if let Some(direction) = Direction::from_attribute(value) {
        section.direction = Some(direction);
    } else if let Some(map) = value.strip_prefix("rtpmap:") {
        section.rtpmap.push(parse_rtpmap(map)?);
    } else if let Some(ptime) = value.strip_prefix("ptime:") {
        let ptime = ptime
            .trim()
            .parse()
            .map_err(|_| SdpError::Malformed("a=ptime is not a number"))?;
        section.ptime = Some(ptime);
    }
    Ok(())
}

/// `101 telephone-event/8000` or `0 PCMU/8000/1`.
fn parse_rtpmap(value: &str) -> Result<RtpMap, SdpError> {
    const BAD: SdpError = SdpError::Malformed("a=rtpmap is not <pt> <encoding>/<clock>");
    let (pt, encoding) = value.trim().split_once(' ').ok_or(BAD)?;
    let mut parts = encoding.trim().split('/');
    let (Some(name), Some(clock)) = (parts.next(), parts.next()) else {
        return Err(BAD);
    };
    let channels = match parts.next() {
        Some(channels) => Some(channels.parse().map_err(|_| BAD)?),
        None => None,
    };
    Ok(RtpMap {
        payload_type: pt.parse().map_err(|_| BAD)?,
        encoding: name.to_owned(),
        clock_rate: clock.parse().map_err(|_| BAD)?,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_UAC: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    const POLYCOM: &str = "v=0\r\n\
        o=- 1700000000 1700000000 IN IP4 192.168.1.50\r\n\
        s=Polycom IP Phone\r\n\
        c=IN IP4 192.168.1.50\r\n\
        t=0 0\r\n\
        a=sendrecv\r\n\
        m=audio 2222 RTP/AVP 9 102 0 8 18 127\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:102 G7221/16000\r\n\
        a=fmtp:102 bitrate=32000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:18 G729/8000\r\n\
        a=fmtp:18 annexb=no\r\n\
        a=rtpmap:127 telephone-event/8000\r\n";

    const YEALINK: &str = "v=0\r\n\
        o=- 20012 20012 IN IP4 10.0.0.23\r\n\
        s=SDP data\r\n\
        c=IN IP4 10.0.0.23\r\n\
        t=0 0\r\n\
        m=audio 11790 RTP/AVP 8 0 9 18 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:18 G729/8000\r\n\
        a=fmtp:18 annexb=no\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n";

    const BOTH: &[Codec] = &[Codec::Pcmu, Codec::Pcma];

    #[test]
    fn sipp_default_offer() {
        let offer = parse(SIPP_UAC.as_bytes()).unwrap();
        assert_eq!(offer.connection, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(offer.port, 6000);
        assert_eq!(offer.payload_types, [0]);
        assert_eq!(offer.telephone_event_pt, None);
        assert_eq!(offer.direction, Direction::SendRecv);
        let chosen = negotiate(&offer, BOTH).unwrap();
        assert_eq!(chosen.codec, Codec::Pcmu);
        assert_eq!(chosen.payload_type, 0);
        assert_eq!(
            negotiate(&offer, &[Codec::Pcma]),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn polycom_offer_skips_wideband_and_finds_dtmf() {
        let offer = parse(POLYCOM.as_bytes()).unwrap();
        assert_eq!(offer.payload_types, [9, 102, 0, 8, 18, 127]);
        assert_eq!(offer.telephone_event_pt, Some(127));
        assert_eq!(offer.rtpmap.len(), 6);
        let chosen = negotiate(&offer, &[Codec::Pcma, Codec::Pcmu]).unwrap();
        // The offerer's order wins over ours.
        assert_eq!((chosen.codec, chosen.payload_type), (Codec::Pcmu, 0));
        assert_eq!(chosen.telephone_event_pt, Some(127));
    }

    #[test]
    fn yealink_offer_prefers_alaw() {
        let offer = parse(YEALINK.as_bytes()).unwrap();
        assert_eq!(offer.ptime, Some(20));
        assert_eq!(offer.telephone_event_pt, Some(101));
        assert_eq!(negotiate(&offer, BOTH).unwrap().codec, Codec::Pcma);
    }

    #[test]
    fn static_types_without_rtpmap_and_dynamic_g711() {
        let sdp = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n\
            m=audio 4000 RTP/AVP 96 8\na=rtpmap:96 pcmu/8000/1\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        let chosen = negotiate(&offer, BOTH).unwrap();
        assert_eq!((chosen.codec, chosen.payload_type), (Codec::Pcmu, 96));
        let chosen = negotiate(&offer, &[Codec::Pcma]).unwrap();
        assert_eq!((chosen.codec, chosen.payload_type), (Codec::Pcma, 8));
        // An rtpmap overrides what a static number would mean.
        let sdp = sdp.replace("96 8", "0").replace("96 pcmu", "0 G729");
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(negotiate(&offer, BOTH), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn rejected_and_srtp_streams_are_skipped() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=audio 5000 RTP/SAVP 0\r\n\
            m=video 5002 RTP/AVP 31\r\n\
            m=audio 5004 RTP/AVP 8\r\nc=IN IP4 192.0.2.9\r\na=recvonly\r\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(offer.audio_index, 3);
        assert_eq!(offer.port, 5004);
        assert_eq!(offer.connection, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(offer.direction, Direction::RecvOnly);
        assert_eq!(offer.media_lines.len(), 4);

        let only_rejected = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n\
            t=0 0\r\nm=audio 0 RTP/AVP 0\r\nm=video 5002 RTP/AVP 31\r\n";
        let err = parse(only_rejected.as_bytes()).unwrap_err();
        assert_eq!((err, err.status_code()), (SdpError::NoAudio, 488));
    }

    #[test]
    fn malformed_descriptions() {
        let good = SIPP_UAC;
        let cases = [
            good.replace("v=0", "v=1"),
            good.replace("o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n", ""),
            good.replace("c=IN IP4 127.0.0.1", "c=IN IP4 phone.example.com"),
            good.replace("c=IN IP4 127.0.0.1\r\n", ""),
            good.replace("6000", "70000"),
            good.replace("RTP/AVP 0", "RTP/AVP"),
            good.replace("RTP/AVP 0", "RTP/AVP 200"),
            good.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"),
            good.replace("a=rtpmap:0 PCMU/8000", "a=ptime:twenty"),
            good.replace("t=0 0", "tee"),
            String::new(),
        ];
        for sdp in cases {
            let err = parse(sdp.as_bytes()).unwrap_err();
            assert!(matches!(err, SdpError::Malformed(_)), "{sdp:?}: {err:?}");
            assert_eq!(err.status_code(), 400);
        }
    }

    #[test]
    fn session_level_direction_and_ipv6() {
        let sdp = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
            a=sendonly\r\nm=audio 7000 RTP/AVP 0\r\n";
        let offer = parse(sdp.as_bytes()).unwrap();
        assert_eq!(offer.direction, Direction::SendOnly);
        assert_eq!(offer.connection, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn answer_directions_follow_rfc3264() {
        use Direction::*;
        assert_eq!(SendOnly.answer(SendRecv), RecvOnly);
        assert_eq!(RecvOnly.answer(SendRecv), SendOnly);
        assert_eq!(Inactive.answer(SendRecv), Inactive);
        assert_eq!(SendRecv.answer(SendOnly), SendOnly);
        assert_eq!(SendOnly.answer(SendOnly), Inactive);
    }

    #[test]
    fn built_offer_parses_back() {
        let codecs = [(0, Codec::Pcmu), (8, Codec::Pcma)];
        let local = LocalMedia {
            session_id: 42,
            version: 1,
            addr: "192.0.2.7".parse().unwrap(),
            port: 30000,
            codecs: &codecs,
            telephone_event_pt: Some(101),
            direction: Direction::SendRecv,
        };
        let sdp = build(&local);
        assert_eq!(
            sdp,
            "v=0\r\no=- 42 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let back = parse(sdp.as_bytes()).unwrap();
        assert_eq!(back.payload_types, [0, 8, 101]);
        assert_eq!(back.telephone_event_pt, Some(101));
        assert_eq!(back.ptime, Some(20));
        assert_eq!(back.port, 30000);
    }

    #[test]
    fn answer_mirrors_the_offers_streams() {
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
            m=video 5002 RTP/AVP 31 34\r\na=rtpmap:31 H261/90000\r\n\
            m=audio 5004 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
        let offer = parse(offer.as_bytes()).unwrap();
        let chosen = negotiate(&offer, BOTH).unwrap();
        let codecs = [(chosen.payload_type, chosen.codec)];
        let local = LocalMedia {
            session_id: 7,
            version: 1,
            addr: "2001:db8::5".parse().unwrap(),
            port: 40000,
            codecs: &codecs,
            telephone_event_pt: chosen.telephone_event_pt,
            direction: Direction::SendRecv,
        };
        let answer = build_answer(&offer, &local);
        assert!(answer.contains("c=IN IP6 2001:db8::5\r\n"));
        let video = answer.find("m=video 0 RTP/AVP 31 34\r\n").unwrap();
        let audio = answer.find("m=audio 40000 RTP/AVP 8 101\r\n").unwrap();
        assert!(video < audio);
        assert!(answer.ends_with("a=recvonly\r\n"));
        let parsed = parse(answer.as_bytes()).unwrap();
        assert_eq!(parsed.audio_index, 1);
        assert_eq!(negotiate(&parsed, BOTH).unwrap().codec, Codec::Pcma);
    }

    #[test]
    fn content_types() {
        assert!(is_sdp_content_type("application/sdp"));
        assert!(is_sdp_content_type("Application/SDP ; charset=utf-8"));
        assert!(!is_sdp_content_type("application/unknownformat"));
        assert!(!is_sdp_content_type("multipart/mixed;boundary=x"));
    }
}
