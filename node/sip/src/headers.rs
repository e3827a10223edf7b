//! Typed accessors for the headers every layer reads.
//!
//! rsip stores header values as text and parses them on demand; these helpers do that parsing
//! once, in one place, and return `None` rather than an error where a value is absent or
//! malformed, so callers decide what a missing value means for them.

use rsip::prelude::*;
use rsip::{Method, Request, Response, SipMessage};

/// The magic cookie that marks an RFC 3261 branch parameter (§8.1.1.7).
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// Accessors shared by requests, responses and [`SipMessage`].
#[allow(
    clippy::wrong_self_convention,
    reason = "from_* accessors are named after SIP's From header, not conversions"
)]
pub trait MessageExt: HeadersExt {
    /// The Call-ID value.
    fn call_id(&self) -> Option<&str> {
        self.call_id_header().ok().map(|h| h.value())
    }

    /// The top Via, typed: one parse for callers that need several of its parts.
    fn top_via(&self) -> Option<rsip::typed::Via> {
        self.via_header().ok()?.typed().ok()
    }

    /// The top Via's `branch` parameter.
    fn top_branch(&self) -> Option<String> {
        let via = self.via_header().ok()?.typed().ok()?;
        via.branch().map(|b| b.to_string())
    }

    /// The top Via's sent-by (`host[:port]`) as written.
    fn top_sent_by(&self) -> Option<String> {
        let via = self.via_header().ok()?.typed().ok()?;
        Some(via.uri.host_with_port.to_string())
    }

    /// CSeq number and method.
    fn cseq(&self) -> Option<(u32, Method)> {
        let cseq = self.cseq_header().ok()?.typed().ok()?;
        Some((cseq.seq, cseq.method))
    }

    /// The `tag` parameter of From.
    fn from_tag(&self) -> Option<String> {
        self.from_header()
            .ok()?
            .tag()
            .ok()
            .flatten()
            .map(|t| t.value().to_string())
    }

    /// The `tag` parameter of To.
    fn to_tag(&self) -> Option<String> {
        self.to_header()
            .ok()?
            .tag()
            .ok()
            .flatten()
            .map(|t| t.value().to_string())
    }

    /// The URI of From, parsed with [`crate::message::parse_uri`] (rsip's typed From misreads
    /// user parts containing dots).
    fn from_uri(&self) -> Option<rsip::Uri> {
        name_addr_uri(self.from_header().ok()?.value()).map(|(uri, _)| uri)
    }

    /// The URI of To (see [`MessageExt::from_uri`]).
    fn to_uri(&self) -> Option<rsip::Uri> {
        name_addr_uri(self.to_header().ok()?.value()).map(|(uri, _)| uri)
    }

    /// Max-Forwards, if present and numeric.
    fn max_forwards(&self) -> Option<u32> {
        self.max_forwards_header().ok()?.num().ok()
    }

    /// Expires header value in seconds, if present and numeric.
    fn expires(&self) -> Option<u32> {
        self.expires_header()?.seconds().ok()
    }
}

impl MessageExt for Request {}
impl MessageExt for Response {}
impl MessageExt for SipMessage {}

/// Splits a name-addr or addr-spec header value (`"Bob" <sip:b@h;lr>;tag=1`, `sip:b@h;tag=1`)
/// into its URI and the header parameters that follow it (`;tag=1`). Without angle brackets
/// the URI ends at the first `;` (RFC 3261 §20.10).
pub fn name_addr_uri(value: &str) -> Option<(rsip::Uri, &str)> {
    let (uri_text, params) = match value.find('<') {
        Some(open) => {
            let close = open + value[open..].find('>')?;
            (&value[open + 1..close], &value[close + 1..])
        }
        None => {
            let value = value.trim();
            match value.find(';') {
                Some(semi) => (&value[..semi], &value[semi..]),
                None => (value, ""),
            }
        }
    };
    let uri = crate::message::parse_uri(uri_text).ok()?;
    Some((uri, params))
}

/// The value of header parameter `name` in a parameter list such as `;expires=60;q=0.5`.
pub fn header_param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params.split(';').find_map(|p| {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().trim_matches('"'))
    })
}

/// The user part of a request's Request-URI (the dialled number for an INVITE).
pub fn request_uri_user(request: &Request) -> Option<String> {
    request.uri.auth.as_ref().map(|auth| auth.user.clone())
}
