//! Parsing SIP messages into rsip types, validating what later layers rely on, and building
//! responses.
//!
//! rsip is the message model (header enum, URIs, rendering), but its own tokenizer is not fit
//! for a server facing arbitrary peers (docs/adr/0002-sip-parsing-on-rsip.md): it rejects line
//! folding, compact header names and whitespace before the colon, mis-parses Request-URIs whose
//! user part contains a dot, cannot represent extension methods and ignores Content-Length. So
//! the start line and header section are split here in one pass over the bytes and the rsip
//! values are built from the pieces, with every header under its full, typed name.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rsip::headers::{self, UntypedHeader};
use rsip::{
    Auth, Domain, Header, Headers, Host, HostWithPort, Method, Param, Request, Response, Scheme,
    SipMessage, StatusCode, Uri, Version,
};

/// Why a message was refused. `Display` is the reason phrase of the answer, status code
/// included by [`ParseError::status_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No complete header section (no blank line after the headers).
    #[error("Bad Request - Incomplete Message")]
    Incomplete,
    /// The request line is not `Method SP Request-URI SP SIP-Version`.
    #[error("Bad Request - Malformed Request Line")]
    RequestLine,
    /// The status line is not `SIP-Version SP 3DIGIT SP Reason-Phrase`.
    #[error("Bad Request - Malformed Status Line")]
    StatusLine,
    /// A SIP version other than 2.0.
    #[error("Version Not Supported")]
    UnsupportedVersion,
    /// The Request-URI does not parse, or carries URI headers (not allowed there).
    #[error("Bad Request - Malformed Request-URI")]
    RequestUri,
    /// A well-formed Request-URI whose scheme is neither `sip` nor `sips`.
    #[error("Unsupported URI Scheme")]
    UnsupportedUriScheme,
    /// A well-formed request with an extension method rsip cannot represent.
    #[error("Not Implemented")]
    UnknownMethod,
    /// A header line without a colon, a bad header name, stray CR/LF or non-UTF-8 octets.
    #[error("Bad Request - Malformed Header")]
    HeaderSyntax,
    /// A mandatory header is absent.
    #[error("Bad Request - Missing {0}")]
    MissingHeader(&'static str),
    /// A single-valued header appears more than once.
    #[error("Bad Request - Multiple {0}")]
    DuplicateHeader(&'static str),
    /// A header value that later layers rely on does not parse.
    #[error("Bad Request - Invalid {0}")]
    InvalidHeader(&'static str),
    /// The CSeq method differs from the request method.
    #[error("Bad Request - CSeq Method Mismatch")]
    CSeqMethodMismatch,
    /// Content-Length is larger than the body received.
    #[error("Bad Request - Body Shorter Than Content-Length")]
    BodyTruncated,
}

impl ParseError {
    /// The status code a request failing this way is answered with.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::UnsupportedVersion => 505,
            Self::UnsupportedUriScheme => 416,
            Self::UnknownMethod => 501,
            _ => 400,
        }
    }
}

/// Parses one SIP message (a UDP datagram or a frame from [`crate::framing::StreamFramer`]).
///
/// Accepts header folding, compact header names, any header-name case and whitespace around the
/// colon; comma-separated Via, Route, Record-Route and Contact values become one header each, and
/// linear whitespace in structured headers is rewritten to canonical form so rsip's typed parsers
/// and anything we forward see clean values. A body longer than Content-Length is truncated to it
/// (RFC 3261 §18.3); without Content-Length the body is the rest of the datagram.
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let (head, rest) = split_head(bytes)?;
    if has_bare_cr_or_lf(head) {
        return Err(ParseError::HeaderSyntax);
    }
    let head = std::str::from_utf8(head).map_err(|_| ParseError::HeaderSyntax)?;
    let (start, header_lines) = match head.split_once("\r\n") {
        Some((start, lines)) => (start, Some(lines)),
        None => (head, None),
    };
    let start = parse_start_line(start)?;
    let request_method = match start {
        StartLine::Request { method, .. } => Some(method),
        StartLine::Response { .. } => None,
    };

    let mut fields = Fields::new(request_method);
    if let Some(lines) = header_lines {
        for (name, value) in unfold(lines)? {
            fields.add(name, value)?;
        }
    }
    fields.check_mandatory()?;

    let body = match fields.content_length {
        Some(len) if len > rest.len() => return Err(ParseError::BodyTruncated),
        Some(len) => &rest[..len],
        None => rest,
    };

    Ok(match start {
        StartLine::Request { method, uri } => {
            let uri = parse_request_uri(uri)?;
            let method = known_method(method).ok_or(ParseError::UnknownMethod)?;
            SipMessage::Request(Request {
                method,
                uri,
                version: Version::V2,
                headers: Headers::from(fields.headers),
                body: body.to_vec(),
            })
        }
        StartLine::Response { code, reason } => {
            let status_code = match StatusCode::from(code) {
                StatusCode::Other(code, _) => StatusCode::Other(code, reason.to_owned()),
                known => known,
            };
            SipMessage::Response(Response {
                status_code,
                version: Version::V2,
                headers: Headers::from(fields.headers),
                body: body.to_vec(),
            })
        }
    })
}

/// Builds the answer to a request that [`parse`] refused: `err.status_code()` with `err` as the
/// reason phrase, echoing the raw Via, From, To, Call-ID and CSeq lines (compact forms too).
///
/// Returns `None` when the caller should silently drop the message instead: it is a response or
/// an ACK (never answered), not recognisably a request, or has no Via or CSeq to route and match
/// the answer with.
pub fn error_response(raw: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let raw = trim_leading_crlf(raw);
    let head = match find_subslice(raw, b"\r\n\r\n") {
        Some(end) => &raw[..end],
        None => raw,
    };
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let start = lines.next()?;
    let method = start.split(|&b| b == b' ').next()?;
    if method.is_empty()
        || !method.iter().all(|&b| is_token_byte(b))
        || start.starts_with(b"SIP/")
        || method == b"ACK"
    {
        return None;
    }

    let mut vias: Vec<String> = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    let mut current: Option<(RawKind, String)> = None;
    let mut flush = |field: Option<(RawKind, String)>| {
        if let Some((kind, value)) = field {
            match kind {
                RawKind::Via => vias.push(value),
                RawKind::From => from = from.take().or(Some(value)),
                RawKind::To => to = to.take().or(Some(value)),
                RawKind::CallId => call_id = call_id.take().or(Some(value)),
                RawKind::CSeq => cseq = cseq.take().or(Some(value)),
            }
        }
    };
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some((_, value)) = current.as_mut() {
                value.push(' ');
                value.push_str(&echo_value(line));
            }
            continue;
        }
        flush(current.take());
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim_ws(&line[..colon]);
        current = raw_kind(name).map(|kind| (kind, echo_value(&line[colon + 1..])));
    }
    flush(current.take());
    let cseq = cseq?;
    if vias.is_empty() {
        return None;
    }

    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {} {}\r\n", err.status_code(), err);
    for via in &vias {
        let _ = write!(out, "Via: {via}\r\n");
    }
    if let Some(from) = &from {
        let _ = write!(out, "From: {from}\r\n");
    }
    if let Some(to) = &to {
        if header_param(to, "tag").is_some() {
            let _ = write!(out, "To: {to}\r\n");
        } else {
            // A stateless UAS must derive the tag from the request so retransmissions get the
            // same answer (RFC 3261 §8.2.7).
            let tag = stateless_tag(&[&vias[0], call_id.as_deref().unwrap_or(""), &cseq]);
            let _ = write!(out, "To: {to};tag={tag:016x}\r\n");
        }
    }
    if let Some(call_id) = &call_id {
        let _ = write!(out, "Call-ID: {call_id}\r\n");
    }
    let _ = write!(out, "CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// A response to `req` (RFC 3261 §8.2.6): all Via headers, From, To, Call-ID, CSeq and
/// `Content-Length: 0`. When To has no tag yet, `to_tag` is added; without one, a response
/// other than 100 gets a fresh tag, as §8.2.6.2 requires.
pub fn response(req: &Request, code: StatusCode, to_tag: Option<&str>) -> Response {
    let fresh_tag;
    let to_tag = match to_tag {
        None if code.code() > 100 => {
            fresh_tag = crate::dialog::new_tag();
            Some(fresh_tag.as_str())
        }
        other => other,
    };
    let mut headers = Vec::with_capacity(8);
    for header in req.headers.iter() {
        match header {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(header.clone())
            }
            Header::To(to) => match to_tag {
                Some(tag) if header_param(to.value(), "tag").is_none() => {
                    headers.push(Header::To(format!("{};tag={tag}", to.value()).into()))
                }
                _ => headers.push(header.clone()),
            },
            _ => {}
        }
    }
    headers.push(Header::ContentLength(0u32.into()));
    Response {
        status_code: code,
        version: Version::V2,
        headers: Headers::from(headers),
        body: Vec::new(),
    }
}

/// Renders a message for the wire. Unlike rsip's `Display` this keeps a binary body intact and
/// always writes one Content-Length matching the body, where the first Content-Length header
/// of `msg` was or else last, so callers can set or change a body without touching headers.
pub fn to_bytes(msg: &SipMessage) -> Vec<u8> {
    let (headers, body) = match msg {
        SipMessage::Request(r) => (&r.headers, &r.body),
        SipMessage::Response(r) => (&r.headers, &r.body),
    };
    let mut out = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = match msg {
        SipMessage::Request(r) => write!(out, "{} {} {}\r\n", r.method, r.uri, r.version),
        SipMessage::Response(r) => write!(out, "{} {}\r\n", r.version, r.status_code),
    };
    let mut length_written = false;
    for header in headers.iter() {
        match header {
            Header::ContentLength(_) if length_written => {}
            Header::ContentLength(_) => {
                length_written = true;
                let _ = write!(out, "Content-Length: {}\r\n", body.len());
            }
            _ => {
                let _ = write!(out, "{header}\r\n");
            }
        }
    }
    if !length_written {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The value of parameter `name` (case-insensitive) of a name-addr header such as To or From:
/// `Some("")` for a parameter without value, `None` if absent. Parameters inside `<...>` belong
/// to the URI and are skipped, as are quoted strings.
fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let bytes = value.as_bytes();
    let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
    let mut params_start = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
            continue;
        }
        match b {
            b'"' => in_quotes = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b';' if !in_angle => {
                params_start = Some(i);
                break;
            }
            _ => {}
        }
    }
    value[params_start?..]
        .split(';')
        .filter_map(|param| {
            let (key, val) = param.split_once('=').unwrap_or((param, ""));
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| val.trim().trim_matches('"'))
        })
        .next()
}

enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    if line.starts_with("SIP/") {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default();
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::UnsupportedVersion);
        }
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StatusLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::StatusLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StatusLine);
        }
        return Ok(StartLine::Response { code, reason });
    }

    // Exactly one SP between elements and none at the end (RFC 4475 lwsstart, trws, lwsruri).
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::RequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) || uri.is_empty() {
        return Err(ParseError::RequestLine);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        let looks_like_version = version.len() > 4
            && version
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
        return Err(if looks_like_version {
            ParseError::UnsupportedVersion
        } else {
            ParseError::RequestLine
        });
    }
    Ok(StartLine::Request { method, uri })
}

/// Method names are case-sensitive (RFC 3261 §7.1), unlike rsip's own parser.
fn known_method(method: &str) -> Option<Method> {
    Some(match method {
        "INVITE" => Method::Invite,
        "ACK" => Method::Ack,
        "BYE" => Method::Bye,
        "CANCEL" => Method::Cancel,
        "OPTIONS" => Method::Options,
        "REGISTER" => Method::Register,
        "INFO" => Method::Info,
        "MESSAGE" => Method::Message,
        "NOTIFY" => Method::Notify,
        "PRACK" => Method::PRack,
        "PUBLISH" => Method::Publish,
        "REFER" => Method::Refer,
        "SUBSCRIBE" => Method::Subscribe,
        "UPDATE" => Method::Update,
        _ => return None,
    })
}

/// Parses a SIP or SIPS URI found in a header (From, To, Contact, a dialog's remote target).
/// URI headers (`?Route=...`) are allowed there and dropped: nothing downstream routes on them.
pub fn parse_uri(text: &str) -> Result<Uri, ParseError> {
    let without_headers = text.split_once('?').map_or(text, |(uri, _)| uri);
    parse_request_uri(without_headers.trim())
}

/// Parses a `sip:`/`sips:` Request-URI into rsip's `Uri`. rsip's own URI tokenizer stops the
/// user part at the first dot, so `sip:first.last@host` would come out as a host.
fn parse_request_uri(text: &str) -> Result<Uri, ParseError> {
    let (scheme, rest) = text.split_once(':').ok_or(ParseError::RequestUri)?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() || !rest.bytes().all(is_uri_byte) {
        return Err(ParseError::RequestUri);
    }
    let scheme = if scheme.eq_ignore_ascii_case("sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case("sips") {
        Scheme::Sips
    } else {
        return Err(ParseError::UnsupportedUriScheme);
    };

    // The user part may hold `;`, `?` and `:` but never a raw `@`, so the first `@` ends it.
    let (auth, host_part) = match rest.split_once('@') {
        Some((userinfo, host_part)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password.to_owned())),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(ParseError::RequestUri);
            }
            let auth = Auth {
                user: user.to_owned(),
                password,
            };
            (Some(auth), host_part)
        }
        None => (None, rest),
    };
    // URI headers are not allowed in a Request-URI (RFC 3261 §19.1.1, RFC 4475 escruri).
    if host_part.contains(['?', '@']) {
        return Err(ParseError::RequestUri);
    }
    let mut pieces = host_part.split(';');
    let host_with_port =
        parse_host_port(pieces.next().unwrap_or_default()).ok_or(ParseError::RequestUri)?;
    let mut params = Vec::new();
    for piece in pieces {
        let (name, value) = match piece.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (piece, None),
        };
        if name.is_empty() {
            return Err(ParseError::RequestUri);
        }
        // rsip refuses e.g. unknown transports; keep those as plain parameters.
        params.push(
            Param::try_from((name, value))
                .unwrap_or_else(|_| Param::Other(name.into(), value.map(Into::into))),
        );
    }
    Ok(Uri {
        scheme: Some(scheme),
        auth,
        host_with_port,
        params,
        headers: Vec::new(),
    })
}

/// `host[:port]` of a URI or Via sent-by. IPv6 references stay bracketed text because rsip
/// renders `Host::IpAddr` without brackets.
fn parse_host_port(text: &str) -> Option<HostWithPort> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (addr, after) = inner.split_once(']')?;
        addr.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Host::Domain(Domain::from(&text[..addr.len() + 2])), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !host_ok {
            return None;
        }
        let host = match host.parse::<Ipv4Addr>() {
            Ok(ip) => Host::IpAddr(IpAddr::V4(ip)),
            Err(_) => Host::Domain(Domain::from(host)),
        };
        (host, port)
    };
    let port = match port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(port.parse::<u16>().ok()?.into())
        }
        Some(_) => return None,
        None => None,
    };
    Some(HostWithPort { host, port })
}

/// Header fields collected into rsip headers, with what validation needs to remember.
struct Fields<'m> {
    request_method: Option<&'m str>,
    headers: Vec<Header>,
    via: bool,
    from: bool,
    to: bool,
    call_id: bool,
    cseq: bool,
    max_forwards: bool,
    content_length: Option<usize>,
}

impl<'m> Fields<'m> {
    fn new(request_method: Option<&'m str>) -> Self {
        Self {
            request_method,
            headers: Vec::with_capacity(16),
            via: false,
            from: false,
            to: false,
            call_id: false,
            cseq: false,
            max_forwards: false,
            content_length: None,
        }
    }

    fn add(&mut self, name: &str, value: Cow<'_, str>) -> Result<(), ParseError> {
        let mut buf = [0u8; 24];
        let lower = lowercase_name(name, &mut buf);
        match lower {
            b"via" | b"v" => {
                let value = normalize_lws(&value);
                for item in ListItems::new(&value) {
                    if !valid_via(item) {
                        return Err(ParseError::InvalidHeader("Via"));
                    }
                    self.headers.push(Header::Via(item.into()));
                }
                self.via = true;
            }
            b"from" | b"f" => {
                single(&mut self.from, "From")?;
                let value = name_addr(&value).ok_or(ParseError::InvalidHeader("From"))?;
                self.headers.push(Header::From(value.into_owned().into()));
            }
            b"to" | b"t" => {
                single(&mut self.to, "To")?;
                let value = name_addr(&value).ok_or(ParseError::InvalidHeader("To"))?;
                self.headers.push(Header::To(value.into_owned().into()));
            }
            b"call-id" | b"i" => {
                single(&mut self.call_id, "Call-ID")?;
                if value.is_empty() || value.contains([' ', '\t']) {
                    return Err(ParseError::InvalidHeader("Call-ID"));
                }
                self.headers.push(Header::CallId(value.into_owned().into()));
            }
            b"cseq" => {
                single(&mut self.cseq, "CSeq")?;
                let value = normalize_lws(&value);
                let (seq, method) = value
                    .split_once(' ')
                    .ok_or(ParseError::InvalidHeader("CSeq"))?;
                // RFC 3261 §8.1.1.5: a 32-bit number below 2**31.
                let seq_ok = !seq.is_empty()
                    && seq.len() <= 10
                    && seq.bytes().all(|b| b.is_ascii_digit())
                    && seq.parse::<u64>().is_ok_and(|n| n < 1 << 31);
                if !seq_ok || method.is_empty() || !method.bytes().all(is_token_byte) {
                    return Err(ParseError::InvalidHeader("CSeq"));
                }
                if self.request_method.is_some_and(|m| m != method) {
                    return Err(ParseError::CSeqMethodMismatch);
                }
                self.headers.push(Header::CSeq(value.into_owned().into()));
            }
            b"max-forwards" => {
                single(&mut self.max_forwards, "Max-Forwards")?;
                if parse_decimal(&value).is_none_or(|n| n > 255) {
                    return Err(ParseError::InvalidHeader("Max-Forwards"));
                }
                self.headers
                    .push(Header::MaxForwards(value.into_owned().into()));
            }
            b"content-length" | b"l" => {
                if self.content_length.is_some() {
                    return Err(ParseError::DuplicateHeader("Content-Length"));
                }
                let len = parse_decimal(&value)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or(ParseError::InvalidHeader("Content-Length"))?;
                self.content_length = Some(len);
                self.headers
                    .push(Header::ContentLength(value.into_owned().into()));
            }
            b"contact" | b"m" | b"route" | b"record-route" => {
                let value = normalize_lws(&value);
                for item in ListItems::new(&value) {
                    // A URI with headers must be enclosed in <> (RFC 3261 §20.10, RFC 4475
                    // regbadct): without them it is ambiguous.
                    let bare_uri_headers = !item.contains('<') && item.contains('?');
                    if item.is_empty() || bare_uri_headers {
                        return Err(ParseError::InvalidHeader(match lower {
                            b"route" => "Route",
                            b"record-route" => "Record-Route",
                            _ => "Contact",
                        }));
                    }
                    self.headers.push(match lower {
                        b"route" => Header::Route(item.into()),
                        b"record-route" => Header::RecordRoute(item.into()),
                        _ => Header::Contact(item.into()),
                    });
                }
            }
            _ => self
                .headers
                .push(plain_header(lower, name, value.into_owned())),
        }
        Ok(())
    }

    fn check_mandatory(&self) -> Result<(), ParseError> {
        for (present, name) in [
            (self.via, "Via"),
            (self.from, "From"),
            (self.to, "To"),
            (self.call_id, "Call-ID"),
            (self.cseq, "CSeq"),
        ] {
            if !present {
                return Err(ParseError::MissingHeader(name));
            }
        }
        Ok(())
    }
}

fn single(seen: &mut bool, name: &'static str) -> Result<(), ParseError> {
    if std::mem::replace(seen, true) {
        return Err(ParseError::DuplicateHeader(name));
    }
    Ok(())
}

/// Any header not validated by [`Fields::add`], under its rsip variant when rsip has one. Compact
/// names rsip lacks a variant for are expanded so nothing downstream sees one-letter names.
fn plain_header(lower: &[u8], name: &str, value: String) -> Header {
    use headers::*;
    match lower {
        b"accept" => Header::Accept(Accept::new(value)),
        b"accept-encoding" => Header::AcceptEncoding(AcceptEncoding::new(value)),
        b"accept-language" => Header::AcceptLanguage(AcceptLanguage::new(value)),
        b"alert-info" => Header::AlertInfo(AlertInfo::new(value)),
        b"allow" => Header::Allow(Allow::new(value)),
        b"authentication-info" => Header::AuthenticationInfo(AuthenticationInfo::new(value)),
        b"authorization" => Header::Authorization(Authorization::new(value)),
        b"call-info" => Header::CallInfo(CallInfo::new(value)),
        b"content-disposition" => Header::ContentDisposition(ContentDisposition::new(value)),
        b"content-encoding" | b"e" => Header::ContentEncoding(ContentEncoding::new(value)),
        b"content-language" => Header::ContentLanguage(ContentLanguage::new(value)),
        b"content-type" | b"c" => Header::ContentType(ContentType::new(value)),
        b"date" => Header::Date(Date::new(value)),
        b"error-info" => Header::ErrorInfo(ErrorInfo::new(value)),
        b"event" | b"o" => Header::Event(Event::new(value)),
        b"expires" => Header::Expires(Expires::new(value)),
        b"in-reply-to" => Header::InReplyTo(InReplyTo::new(value)),
        b"mime-version" => Header::MimeVersion(MimeVersion::new(value)),
        b"min-expires" => Header::MinExpires(MinExpires::new(value)),
        b"organization" => Header::Organization(Organization::new(value)),
        b"priority" => Header::Priority(Priority::new(value)),
        b"proxy-authenticate" => Header::ProxyAuthenticate(ProxyAuthenticate::new(value)),
        b"proxy-authorization" => Header::ProxyAuthorization(ProxyAuthorization::new(value)),
        b"proxy-require" => Header::ProxyRequire(ProxyRequire::new(value)),
        b"reply-to" => Header::ReplyTo(ReplyTo::new(value)),
        b"require" => Header::Require(Require::new(value)),
        b"retry-after" => Header::RetryAfter(RetryAfter::new(value)),
        b"server" => Header::Server(Server::new(value)),
        b"subject" | b"s" => Header::Subject(Subject::new(value)),
        b"subscription-state" => Header::SubscriptionState(SubscriptionState::new(value)),
        b"supported" | b"k" => Header::Supported(Supported::new(value)),
        b"timestamp" => Header::Timestamp(Timestamp::new(value)),
        b"unsupported" => Header::Unsupported(Unsupported::new(value)),
        b"user-agent" => Header::UserAgent(UserAgent::new(value)),
        b"warning" => Header::Warning(Warning::new(value)),
        b"www-authenticate" => Header::WwwAuthenticate(WwwAuthenticate::new(value)),
        b"a" => Header::Other("Accept-Contact".into(), value),
        b"b" => Header::Other("Referred-By".into(), value),
        b"d" => Header::Other("Request-Disposition".into(), value),
        b"j" => Header::Other("Reject-Contact".into(), value),
        b"n" => Header::Other("Identity-Info".into(), value),
        b"r" => Header::Other("Refer-To".into(), value),
        b"u" => Header::Other("Allow-Events".into(), value),
        b"x" => Header::Other("Session-Expires".into(), value),
        b"y" => Header::Other("Identity".into(), value),
        _ => Header::Other(name.to_owned(), value),
    }
}

/// Lower-cases a header name into `buf`; names too long for it (none we know is) come back
/// empty, which matches no known name.
fn lowercase_name<'b>(name: &str, buf: &'b mut [u8; 24]) -> &'b [u8] {
    let Some(dst) = buf.get_mut(..name.len()) else {
        return &[];
    };
    for (d, s) in dst.iter_mut().zip(name.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    dst
}

/// Splits header lines into (name, value) pairs, joining folded continuation lines with a
/// single SP (RFC 3261 §7.3.1). Values borrow from the message unless folding forced a copy.
fn unfold(lines: &str) -> Result<Vec<(&str, Cow<'_, str>)>, ParseError> {
    let mut fields: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    for line in lines.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let (_, value) = fields.last_mut().ok_or(ParseError::HeaderSyntax)?;
            let more = line.trim_matches([' ', '\t']);
            if !more.is_empty() {
                let value = value.to_mut();
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::HeaderSyntax)?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::HeaderSyntax);
        }
        fields.push((name, Cow::Borrowed(value.trim_matches([' ', '\t']))));
    }
    Ok(fields)
}

/// Rewrites linear whitespace in a structured header value to canonical form: none around
/// `/ ; = , :`, after `<` or before `>`, a single SP elsewhere; quoted strings are untouched.
/// Borrows when the value is already canonical, as nearly all are.
fn normalize_lws(value: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut chars = value.char_indices().peekable();
    let (mut in_quotes, mut escaped) = (false, false);
    let mut prev: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
        } else if c == ' ' || c == '\t' {
            let mut canonical = c == ' ';
            while let Some(&(_, next)) = chars.peek() {
                if next != ' ' && next != '\t' {
                    break;
                }
                canonical = false;
                chars.next();
            }
            let next = chars.peek().map(|&(_, next)| next);
            let keep = match (prev, next) {
                (Some(p), Some(n)) => {
                    !matches!(p, '/' | ';' | '=' | ',' | ':' | '<')
                        && !matches!(n, '/' | ';' | '=' | ',' | ':' | '>')
                }
                _ => false,
            };
            match out.as_mut() {
                Some(out) if keep => out.push(' '),
                Some(_) => {}
                None if keep && canonical => {}
                None => {
                    let out = out.insert(value[..i].to_owned());
                    if keep {
                        out.push(' ');
                    }
                }
            }
            continue;
        } else if c == '"' {
            in_quotes = true;
        }
        if let Some(out) = out.as_mut() {
            out.push(c);
        }
        prev = Some(c);
    }
    match out {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(value),
    }
}

/// Items of a comma-separated header value, ignoring commas inside quotes and `<...>`.
struct ListItems<'a> {
    rest: Option<&'a str>,
}

impl<'a> ListItems<'a> {
    fn new(value: &'a str) -> Self {
        Self { rest: Some(value) }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
        for (i, b) in rest.bytes().enumerate() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
                continue;
            }
            match b {
                b'"' => in_quotes = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    self.rest = Some(&rest[i + 1..]);
                    return Some(rest[..i].trim());
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest.trim())
    }
}

/// `SIP/2.0/UDP host[:port] *(;param[=value])` after LWS normalisation.
fn valid_via(via: &str) -> bool {
    let Some((protocol, rest)) = via.split_once(' ') else {
        return false;
    };
    let mut parts = protocol.split('/');
    let protocol_ok = (0..3).all(|_| {
        parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(is_token_byte))
    }) && parts.next().is_none();
    let mut params = rest.split(';');
    protocol_ok
        && parse_host_port(params.next().unwrap_or_default()).is_some()
        && params.all(|param| {
            let name = param.split_once('=').map_or(param, |(name, _)| name);
            !name.is_empty() && name.bytes().all(is_token_byte)
        })
}

/// Normalises a From/To value and checks its name-addr / addr-spec shape: a display name must be
/// a quoted string or tokens (RFC 4475 quotbal, baddn), `<` needs its `>`, and the address needs
/// a scheme. URI details are left to rsip's typed parsers.
fn name_addr(value: &str) -> Option<Cow<'_, str>> {
    let value = normalize_lws(value);
    let bytes = value.as_bytes();
    let angle = if bytes.first() == Some(&b'"') {
        let mut escaped = false;
        let close = bytes.iter().enumerate().skip(1).find_map(|(i, &b)| {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                return Some(i);
            }
            None
        })?;
        let after = close + 1 + (bytes.get(close + 1) == Some(&b' ')) as usize;
        (bytes.get(after) == Some(&b'<')).then_some(after)?
    } else {
        match value.find('<') {
            Some(lt) => {
                let display_ok = value[..lt].bytes().all(|b| b == b' ' || is_token_byte(b));
                display_ok.then_some(lt)?
            }
            None => {
                let addr = value.split(';').next().unwrap_or_default();
                let ok = addr.contains(':') && !addr.contains(['"', '>', ' ']);
                return ok.then_some(value);
            }
        }
    };
    let inner = &value[angle + 1..];
    let gt = inner.find('>')?;
    let after = &inner[gt + 1..];
    (inner[..gt].contains(':') && (after.is_empty() || after.starts_with(';'))).then_some(value)
}

/// Headers [`error_response`] echoes.
#[derive(Clone, Copy)]
enum RawKind {
    Via,
    From,
    To,
    CallId,
    CSeq,
}

fn raw_kind(name: &[u8]) -> Option<RawKind> {
    let is = |full: &[u8], compact: &[u8]| {
        name.eq_ignore_ascii_case(full)
            || (!compact.is_empty() && name.eq_ignore_ascii_case(compact))
    };
    if is(b"via", b"v") {
        Some(RawKind::Via)
    } else if is(b"from", b"f") {
        Some(RawKind::From)
    } else if is(b"to", b"t") {
        Some(RawKind::To)
    } else if is(b"call-id", b"i") {
        Some(RawKind::CallId)
    } else if is(b"cseq", b"") {
        Some(RawKind::CSeq)
    } else {
        None
    }
}

/// A raw header value to echo in an answer: trimmed, and with any stray CR (a line was split at
/// LF only) blanked so the answer cannot carry a broken line.
fn echo_value(raw: &[u8]) -> String {
    String::from_utf8_lossy(trim_ws(raw)).replace('\r', " ")
}

/// FNV-1a over the parts: cheap, deterministic, and good enough to tell dialogs apart.
fn stateless_tag(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// RFC 3261 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Characters a SIP URI may contain: unreserved, reserved, `%` escapes and IPv6 brackets.
fn is_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
                | b';'
                | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b','
                | b'%'
                | b'['
                | b']'
        )
}

/// Splits off the header section (without its closing blank line) from the body, after skipping
/// CRLFs before the start line (RFC 3261 §7.5). A message ending right after its last header
/// line, without the blank line, is accepted as having no body.
fn split_head(bytes: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let bytes = trim_leading_crlf(bytes);
    match find_subslice(bytes, b"\r\n\r\n") {
        Some(end) => Ok((&bytes[..end], &bytes[end + 4..])),
        None if bytes.len() > 2 && bytes.ends_with(b"\r\n") => Ok((&bytes[..bytes.len() - 2], &[])),
        None => Err(ParseError::Incomplete),
    }
}

fn trim_leading_crlf(mut bytes: &[u8]) -> &[u8] {
    while let Some(rest) = bytes.strip_prefix(b"\r\n") {
        bytes = rest;
    }
    bytes
}

fn has_bare_cr_or_lf(head: &[u8]) -> bool {
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'\r' if head.get(i + 1) == Some(&b'\n') => i += 2,
            b'\r' | b'\n' => return true,
            _ => i += 1,
        }
    }
    false
}

pub(crate) fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ws(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::MessageExt;
    use rsip::prelude::*;

    const INVITE: &str = "INVITE sip:alice.smith@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        To: Alice <sip:alice.smith@example.com>\r\n\
        From: Bob <sip:bob@example.org>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.example.org\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:bob@192.0.2.1>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\
        \r\n\
        v=0\r";

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_plain_invite() {
        let req = request(INVITE);
        assert_eq!(req.method, Method::Invite);
        assert_eq!(req.uri.user(), Some("alice.smith"));
        assert_eq!(req.uri.host().to_string(), "example.com");
        assert_eq!(req.call_id(), Some("a84b4c76e66710@pc33.example.org"));
        assert_eq!(req.cseq(), Some((314159, Method::Invite)));
        assert_eq!(req.top_branch().as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(req.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(req.max_forwards(), Some(70));
        assert_eq!(req.body, b"v=0\r");
    }

    #[test]
    fn compact_forms_become_typed_headers() {
        let text = "OPTIONS sip:a@example.com SIP/2.0\r\n\
            v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
            f: <sip:b@example.com>;tag=1\r\n\
            t: <sip:a@example.com>\r\n\
            i: abc@h\r\n\
            CSeq: 1 OPTIONS\r\n\
            m: <sip:b@h.example.com>\r\n\
            c: text/plain\r\n\
            k: timer\r\n\
            s: hi\r\n\
            e: gzip\r\n\
            o: refer\r\n\
            r: <sip:c@example.com>\r\n\
            x: 1800\r\n\
            l: 0\r\n\r\n";
        let req = request(text);
        let names: Vec<String> = req
            .headers
            .iter()
            .map(|h| {
                h.to_string()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "Via",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Contact",
                "Content-Type",
                "Supported",
                "Subject",
                "Content-Encoding",
                "Event",
                "Refer-To",
                "Session-Expires",
                "Content-Length"
            ]
        );
        assert!(matches!(req.headers.iter().next(), Some(Header::Via(_))));
        assert_eq!(req.call_id(), Some("abc@h"));
    }

    #[test]
    fn header_names_are_case_insensitive_and_may_have_space_before_colon() {
        let text = INVITE
            .replace("Call-ID:", "CALL-id  :")
            .replace("Via:", "vIA\t:");
        let req = request(&text);
        assert_eq!(req.call_id(), Some("a84b4c76e66710@pc33.example.org"));
        assert_eq!(req.top_branch().as_deref(), Some("z9hG4bK776asdhds"));
    }

    #[test]
    fn folded_headers_are_unfolded_and_normalised() {
        let text = INVITE
            .replace(
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
                "Via: SIP / 2.0\r\n /UDP\r\n\t192.0.2.1:5060 ;\r\n branch = z9hG4bK776asdhds",
            )
            .replace("CSeq: 314159 INVITE", "CSeq: 314159\r\n   INVITE");
        let req = request(&text);
        assert_eq!(
            req.via_header()
                .map(|v| v.value().to_owned())
                .ok()
                .as_deref(),
            Some("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds")
        );
        assert_eq!(req.top_branch().as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(req.cseq(), Some((314159, Method::Invite)));
    }

    #[test]
    fn normalize_lws_keeps_quoted_strings_and_borrows_canonical_values() {
        assert!(matches!(
            normalize_lws("\"A  B\" <sip:a@b>;tag=1"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            normalize_lws("\"A  ;B\"   < sip:a@b > ;  tag = 1"),
            "\"A  ;B\" <sip:a@b>;tag=1"
        );
        assert_eq!(normalize_lws("1 \t INVITE"), "1 INVITE");
    }

    #[test]
    fn comma_separated_vias_and_contacts_are_split() {
        let text = INVITE
            .replace(
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
                "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKa, SIP/2.0/TCP p2.example.com;branch=z9hG4bKb",
            )
            .replace(
                "Contact: <sip:bob@192.0.2.1>",
                "Contact: \"Bob, Jr\" <sip:bob@192.0.2.1>, <sip:bob@192.0.2.2>",
            );
        let req = request(&text);
        let vias: Vec<_> = req
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Via(v) => Some(v.value().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP p1.example.com;branch=z9hG4bKa",
                "SIP/2.0/TCP p2.example.com;branch=z9hG4bKb"
            ]
        );
        let contacts = req
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Contact(_)))
            .count();
        assert_eq!(contacts, 2);
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        for (header, name) in [
            (
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n",
                "Via",
            ),
            ("From: Bob <sip:bob@example.org>;tag=1928301774\r\n", "From"),
            ("To: Alice <sip:alice.smith@example.com>\r\n", "To"),
            ("Call-ID: a84b4c76e66710@pc33.example.org\r\n", "Call-ID"),
            ("CSeq: 314159 INVITE\r\n", "CSeq"),
        ] {
            let err = parse(INVITE.replace(header, "").as_bytes()).unwrap_err();
            assert_eq!(err, ParseError::MissingHeader(name));
            assert_eq!(err.status_code(), 400);
        }
        assert_eq!(
            ParseError::MissingHeader("Call-ID").to_string(),
            "Bad Request - Missing Call-ID"
        );
    }

    #[test]
    fn rejects_bad_scalars() {
        let cases = [
            (
                "CSeq: 314159 INVITE",
                "CSeq: 314159 BYE",
                ParseError::CSeqMethodMismatch,
            ),
            (
                "CSeq: 314159 INVITE",
                "CSeq: 2147483648 INVITE",
                ParseError::InvalidHeader("CSeq"),
            ),
            (
                "CSeq: 314159 INVITE",
                "CSeq: x INVITE",
                ParseError::InvalidHeader("CSeq"),
            ),
            (
                "Max-Forwards: 70",
                "Max-Forwards: 256",
                ParseError::InvalidHeader("Max-Forwards"),
            ),
            (
                "Max-Forwards: 70",
                "Max-Forwards: ten",
                ParseError::InvalidHeader("Max-Forwards"),
            ),
            (
                "Content-Length: 4",
                "Content-Length: -4",
                ParseError::InvalidHeader("Content-Length"),
            ),
            (
                "Content-Length: 4",
                "Content-Length: 5",
                ParseError::BodyTruncated,
            ),
            (
                "Content-Length: 4",
                "Content-Length: 4\r\nl: 4",
                ParseError::DuplicateHeader("Content-Length"),
            ),
            (
                "Call-ID: a84b",
                "Call-ID: a84b\r\ni: x",
                ParseError::DuplicateHeader("Call-ID"),
            ),
            (
                "To: Alice <sip:",
                "To: \"Alice <sip:",
                ParseError::InvalidHeader("To"),
            ),
            (
                "To: Alice <sip:",
                "To: Alice, A <sip:",
                ParseError::InvalidHeader("To"),
            ),
            (
                "Via: SIP/2.0/UDP 192.0.2.1:5060;",
                "Via: SIP/2.0/UDP 192.0.2.1:5060;;",
                ParseError::InvalidHeader("Via"),
            ),
            (
                "Via: SIP/2.0/UDP",
                "Via: SIP/2.0",
                ParseError::InvalidHeader("Via"),
            ),
            (
                "Call-ID: a84b",
                "Call-ID: a8 4b",
                ParseError::InvalidHeader("Call-ID"),
            ),
            (
                "Max-Forwards: 70",
                "Max-Forwards 70",
                ParseError::HeaderSyntax,
            ),
            ("INVITE sip:", "INVITE  sip:", ParseError::RequestLine),
            ("SIP/2.0\r\nVia", "SIP/2.0 \r\nVia", ParseError::RequestLine),
            (
                "SIP/2.0\r\nVia",
                "SIP/3.0\r\nVia",
                ParseError::UnsupportedVersion,
            ),
            (
                "INVITE sip:alice.smith@example.com",
                "INVITE <sip:alice.smith@example.com>",
                ParseError::RequestUri,
            ),
            (
                "INVITE sip:alice.smith@example.com",
                "INVITE sip:a@example.com?Subject=x",
                ParseError::RequestUri,
            ),
            (
                "INVITE sip:alice.smith@example.com",
                "INVITE sip:a@ex ample.com",
                ParseError::RequestLine,
            ),
            (
                "INVITE sip:alice.smith@example.com",
                "INVITE sip:a@example.com:99999",
                ParseError::RequestUri,
            ),
            (
                "INVITE sip:alice.smith@example.com",
                "INVITE tel:+15551234",
                ParseError::UnsupportedUriScheme,
            ),
            ("INVITE sip:", "invite sip:", ParseError::CSeqMethodMismatch),
        ];
        for (from, to, expected) in cases {
            let text = INVITE.replacen(from, to, 1);
            assert_ne!(text, INVITE, "{from}");
            assert_eq!(parse(text.as_bytes()).unwrap_err(), expected, "{to}");
        }
    }

    #[test]
    fn unknown_methods_are_501_once_the_message_is_well_formed() {
        let text = INVITE.replace("INVITE", "FROB");
        let err = parse(text.as_bytes()).unwrap_err();
        assert_eq!(err, ParseError::UnknownMethod);
        assert_eq!(err.status_code(), 501);
    }

    #[test]
    fn body_is_truncated_to_content_length_or_runs_to_the_end() {
        let text = format!("{INVITE}\nextra");
        assert_eq!(request(&text).body, b"v=0\r");
        let text = INVITE.replace("Content-Length: 4\r\n", "");
        assert_eq!(request(&text).body, b"v=0\r");
    }

    #[test]
    fn leading_crlf_and_missing_final_blank_line_are_tolerated() {
        let text = format!("\r\n\r\n{}", INVITE.replace("Content-Length: 4", "l: 0"));
        assert!(request(&text).body.is_empty());
        let cut = INVITE.replace("Content-Length: 4\r\n\r\nv=0\r", "");
        assert!(request(&cut).body.is_empty());
        assert_eq!(
            parse(b"INVITE sip:a@b SIP/2.0"),
            Err(ParseError::Incomplete)
        );
        assert_eq!(parse(b""), Err(ParseError::Incomplete));
    }

    #[test]
    fn bare_line_feeds_and_non_utf8_headers_are_rejected() {
        let text = INVITE.replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\n");
        assert_eq!(parse(text.as_bytes()), Err(ParseError::HeaderSyntax));
        let mut bytes = INVITE.as_bytes().to_vec();
        bytes[60] = 0xff;
        assert_eq!(parse(&bytes), Err(ParseError::HeaderSyntax));
    }

    #[test]
    fn request_uri_keeps_params_ports_and_ipv6() {
        let uri =
            parse_request_uri("sip:+1555;npdi@[2001:db8::1]:5070;transport=tcp;lr;x=y").unwrap();
        assert_eq!(uri.user(), Some("+1555;npdi"));
        assert_eq!(uri.host().to_string(), "[2001:db8::1]");
        assert_eq!(uri.port().map(|p| *p.value()), Some(5070));
        assert_eq!(uri.transport(), Some(&rsip::Transport::Tcp));
        assert_eq!(
            uri.to_string(),
            "sip:+1555;npdi@[2001:db8::1]:5070;transport=TCP;lr;x=y"
        );
        let uri = parse_request_uri("sips:u:pw@10.0.0.1;transport=foo").unwrap();
        assert_eq!(uri.host(), &Host::IpAddr("10.0.0.1".parse().unwrap()));
        assert_eq!(uri.to_string(), "sips:u:pw@10.0.0.1;transport=foo");
        assert_eq!(parse_request_uri("sip:"), Err(ParseError::RequestUri));
        assert_eq!(parse_request_uri("sip:@h"), Err(ParseError::RequestUri));
        assert_eq!(parse_request_uri("sip:h;=x"), Err(ParseError::RequestUri));
        assert_eq!(parse_request_uri("sip:[::1"), Err(ParseError::RequestUri));
        assert_eq!(parse_request_uri("1sip:h"), Err(ParseError::RequestUri));
    }

    #[test]
    fn parses_responses_with_odd_reason_phrases() {
        let text = "SIP/2.0 180 \r\n\
            Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
        let Ok(SipMessage::Response(resp)) = parse(text.as_bytes()) else {
            panic!("response expected");
        };
        assert_eq!(resp.status_code, StatusCode::Ringing);
        let odd = text.replace("180 ", "299 Zur Sache");
        let Ok(SipMessage::Response(resp)) = parse(odd.as_bytes()) else {
            panic!("response expected");
        };
        assert_eq!(resp.status_code, StatusCode::Other(299, "Zur Sache".into()));
        for bad in ["SIP/2.0 1800 x", "SIP/2.0 099 x", "SIP/2.0 2x0 x"] {
            let text = text.replace("SIP/2.0 180 ", bad);
            assert_eq!(parse(text.as_bytes()), Err(ParseError::StatusLine));
        }
    }

    #[test]
    fn error_response_echoes_raw_headers_including_compact_ones() {
        let raw = "OPTIONS sip:a@example.com SIP/7.0\r\n\
            v: SIP/2.0/UDP h1;branch=z9hG4bK1\r\n\
            Via: SIP/2.0/UDP h2\r\n ;branch=z9hG4bK2\r\n\
            f: <sip:b@example.com>;tag=1\r\n\
            t: <sip:a@example.com>\r\n\
            i: abc@h\r\n\
            CSeq: 7 OPTIONS\r\n\r\n";
        let err = parse(raw.as_bytes()).unwrap_err();
        assert_eq!(err, ParseError::UnsupportedVersion);
        let resp = error_response(raw.as_bytes(), &err).unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(
            resp.starts_with("SIP/2.0 505 Version Not Supported\r\n"),
            "{resp}"
        );
        assert!(resp.contains(
            "Via: SIP/2.0/UDP h1;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP h2 ;branch=z9hG4bK2\r\n"
        ));
        assert!(resp.contains("From: <sip:b@example.com>;tag=1\r\n"));
        assert!(resp.contains("To: <sip:a@example.com>;tag="));
        assert!(resp.contains("Call-ID: abc@h\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"));
        // Deterministic tag, so a retransmission gets the same answer.
        assert_eq!(
            error_response(raw.as_bytes(), &err),
            Some(resp.clone().into_bytes())
        );
        // The answer is itself a parseable response.
        assert!(matches!(
            parse(resp.as_bytes()),
            Ok(SipMessage::Response(_))
        ));
    }

    #[test]
    fn error_response_keeps_an_existing_to_tag() {
        let raw = INVITE.replace(
            "To: Alice <sip:alice.smith@example.com>",
            "To: <sip:a@b>;tag=xyz",
        );
        let resp = error_response(raw.as_bytes(), &ParseError::InvalidHeader("Via")).unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("SIP/2.0 400 Bad Request - Invalid Via\r\n"));
        assert!(resp.contains("\r\nTo: <sip:a@b>;tag=xyz\r\n"));
    }

    #[test]
    fn error_response_declines_what_must_not_be_answered() {
        let err = ParseError::HeaderSyntax;
        let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(error_response(response.as_bytes(), &err), None);
        let ack = INVITE.replace("INVITE sip", "ACK sip");
        assert_eq!(error_response(ack.as_bytes(), &err), None);
        let no_via = INVITE.replace("Via:", "X-Via:");
        assert_eq!(error_response(no_via.as_bytes(), &err), None);
        let no_cseq = INVITE.replace("CSeq:", "X-CSeq:");
        assert_eq!(error_response(no_cseq.as_bytes(), &err), None);
        assert_eq!(error_response(b"\x00\x01garbage", &err), None);
        assert_eq!(error_response(b"", &err), None);
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_the_to_tag() {
        let text = INVITE.replace(
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
            "Via: SIP/2.0/UDP p1;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP p2;branch=z9hG4bKb",
        );
        let req = request(&text);
        let resp = response(&req, StatusCode::OK, Some("as83kd9"));
        assert_eq!(resp.to_tag().as_deref(), Some("as83kd9"));
        assert_eq!(resp.call_id(), req.call_id());
        assert_eq!(resp.cseq(), Some((314159, Method::Invite)));
        let vias = resp
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .count();
        assert_eq!(vias, 2);
        assert!(!resp.headers.iter().any(|h| matches!(h, Header::Contact(_))));

        // An existing To tag is kept, not doubled.
        let again = response(
            &request(&as_request_text(resp.clone())),
            StatusCode::OK,
            Some("other"),
        );
        assert_eq!(again.to_tag().as_deref(), Some("as83kd9"));
    }

    #[test]
    fn response_without_a_given_tag_adds_one_except_to_100() {
        let req = request(INVITE);
        let ringing = response(&req, StatusCode::Ringing, None);
        assert!(ringing.to_tag().is_some_and(|tag| !tag.is_empty()));
        assert_eq!(response(&req, StatusCode::Trying, None).to_tag(), None);
    }

    fn as_request_text(resp: Response) -> String {
        // Turn the response into a request with the same headers, to feed `response` again.
        let mut req = request(INVITE);
        req.headers = resp.headers;
        String::from_utf8(to_bytes(&SipMessage::Request(req))).unwrap()
    }

    #[test]
    fn to_bytes_sets_content_length_and_keeps_binary_bodies() {
        let mut req = request(INVITE);
        req.body = vec![0, 159, 146, 150, b'\r', b'\n'];
        let bytes = to_bytes(&SipMessage::Request(req.clone()));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("INVITE sip:alice.smith@example.com SIP/2.0\r\n"));
        assert_eq!(text.matches("Content-Length").count(), 1);
        assert!(text.contains("Content-Length: 6\r\n\r\n"));
        assert!(bytes.ends_with(&[0, 159, 146, 150, b'\r', b'\n']));
        let Ok(SipMessage::Request(back)) = parse(&bytes) else {
            panic!("round trip failed");
        };
        assert_eq!(back.body, req.body);
        let without_length = |headers: &Headers| {
            headers
                .iter()
                .filter(|h| !matches!(h, Header::ContentLength(_)))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(without_length(&back.headers), without_length(&req.headers));
        assert_eq!(back.uri, req.uri);
    }

    #[test]
    fn header_param_skips_uri_parameters_and_quotes() {
        assert_eq!(header_param("<sip:a@b;tag=no>;tag=yes", "tag"), Some("yes"));
        assert_eq!(header_param("\"x;tag=no\" <sip:a@b>", "tag"), None);
        assert_eq!(header_param("sip:a@b;TAG=1;lr", "tag"), Some("1"));
        assert_eq!(header_param("sip:a@b;lr", "lr"), Some(""));
    }
}
