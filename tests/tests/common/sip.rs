//! Hand-written SIP over raw UDP and TCP sockets, for the protocol tests: build requests,
//! parse whatever comes back (long or compact header names), and Digest (MD5) credentials.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A token unique within this test run.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{prefix}{}x{n}x{nanos:x}", std::process::id())
}

pub fn branch() -> String {
    unique("z9hG4bK")
}

/// Compact form of a header name (RFC 3261 7.3.3 and later RFCs), if it has one.
pub fn compact_of(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "via" => "v",
        "from" => "f",
        "to" => "t",
        "call-id" => "i",
        "contact" => "m",
        "content-length" => "l",
        "content-type" => "c",
        "content-encoding" => "e",
        "subject" => "s",
        "supported" => "k",
        "allow-events" => "u",
        "event" => "o",
        "refer-to" => "r",
        _ => return None,
    })
}

/// A parsed SIP message.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: String,
    pub received: Instant,
}

impl SipMsg {
    pub fn parse(bytes: &[u8]) -> Option<SipMsg> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], text.as_bytes()[i + 4..].to_vec()),
            None => (text.as_str(), Vec::new()),
        };
        let mut lines: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            // Header folding (continuation lines).
            if (line.starts_with(' ') || line.starts_with('\t')) && lines.len() > 1 {
                let last = lines.last_mut().unwrap();
                last.push(' ');
                last.push_str(line.trim());
            } else {
                lines.push(line.to_owned());
            }
        }
        let start = lines.first()?.clone();
        if !start.starts_with("SIP/2.0 ") && !start.ends_with(" SIP/2.0") {
            return None;
        }
        let headers = lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(SipMsg {
            start,
            headers,
            body,
            raw: text,
            received: Instant::now(),
        })
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.start
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|c| c.parse().ok())
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.status().is_some() {
            None
        } else {
            self.start.split_whitespace().next()
        }
    }

    /// Every value of header `name` (long or compact form; comma-joined values are not split).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let short = compact_of(name);
        self.headers
            .iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case(name) || short.is_some_and(|s| k.eq_ignore_ascii_case(s))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// `(number, method)` of the CSeq header.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut parts = v.split_whitespace();
        Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
    }

    /// The `tag` parameter of the To header.
    pub fn to_tag(&self) -> Option<String> {
        tag_param(self.header("To")?)
    }

    /// The URI inside the Contact header (`<...>` stripped).
    pub fn contact_uri(&self) -> Option<String> {
        let v = self.header("Contact")?;
        let uri = match (v.find('<'), v.find('>')) {
            (Some(a), Some(b)) if b > a => &v[a + 1..b],
            _ => v.split(';').next().unwrap_or(v),
        };
        Some(uri.trim().to_owned())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn tag_param(header_value: &str) -> Option<String> {
    // Parameters after the closing '>' (or after the URI without brackets).
    let params = match header_value.rfind('>') {
        Some(i) => &header_value[i + 1..],
        None => header_value,
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_owned())
    })
}

/// Host and port of a `sip:` URI (`sip:user@host:port;params`), for sending to a Contact.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = rest.split([';', '?', '>']).next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5060),
    };
    format!("{host}:{port}").parse().ok()
}

/// A request under construction. `build` fills in Via, Max-Forwards, Content-Length.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Option<String>,
    pub branch: String,
    pub max_forwards: Option<u32>,
    pub headers: Vec<String>,
    pub body: String,
    /// Use compact header names (v f t i m l c).
    pub compact: bool,
}

impl Request {
    pub fn new(method: &str, uri: &str) -> Self {
        let from_tag = unique("t");
        Self {
            method: method.to_owned(),
            uri: uri.to_owned(),
            from: format!("<sip:tester@127.0.0.1>;tag={from_tag}"),
            to: format!("<{uri}>"),
            call_id: unique("call-"),
            cseq: 1,
            cseq_method: None,
            branch: branch(),
            max_forwards: Some(70),
            headers: Vec::new(),
            body: String::new(),
            compact: false,
        }
    }

    pub fn header(mut self, line: &str) -> Self {
        self.headers.push(line.to_owned());
        self
    }

    pub fn body(mut self, content_type: &str, body: &str) -> Self {
        let name = if self.compact { "c" } else { "Content-Type" };
        self.headers.push(format!("{name}: {content_type}"));
        self.body = body.to_owned();
        self
    }

    /// The request as text, sent from `local` over `transport` ("UDP" or "TCP").
    pub fn build(&self, local: SocketAddr, transport: &str) -> String {
        let n = |long: &'static str, short: &'static str| if self.compact { short } else { long };
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        s += &format!(
            "{}: SIP/2.0/{transport} {local};branch={};rport\r\n",
            n("Via", "v"),
            self.branch
        );
        if let Some(mf) = self.max_forwards {
            s += &format!("Max-Forwards: {mf}\r\n");
        }
        s += &format!("{}: {}\r\n", n("From", "f"), self.from);
        s += &format!("{}: {}\r\n", n("To", "t"), self.to);
        s += &format!("{}: {}\r\n", n("Call-ID", "i"), self.call_id);
        s += &format!(
            "CSeq: {} {}\r\n",
            self.cseq,
            self.cseq_method.as_deref().unwrap_or(&self.method)
        );
        for h in &self.headers {
            s += h;
            s += "\r\n";
        }
        s += &format!(
            "{}: {}\r\n\r\n{}",
            n("Content-Length", "l"),
            self.body.len(),
            self.body
        );
        s
    }
}

/// An SDP offer from `127.0.0.1:port` with the given `m=` payload types and `a=` lines.
pub fn sdp(port: u16, payloads: &str, attrs: &[&str]) -> String {
    let mut s = format!(
        "v=0\r\no=tester 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {payloads}\r\n"
    );
    for a in attrs {
        s += a;
        s += "\r\n";
    }
    s
}

/// PCMU offer.
pub fn pcmu_sdp(port: u16) -> String {
    sdp(port, "0", &["a=rtpmap:0 PCMU/8000", "a=sendrecv"])
}

/// A SIP endpoint on a raw UDP socket.
pub struct UdpSip {
    pub sock: UdpSocket,
    pub local: SocketAddr,
    pub node: SocketAddr,
    /// Messages received while waiting for something else.
    pub backlog: Vec<SipMsg>,
}

impl UdpSip {
    pub fn new(node: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let local = sock.local_addr().unwrap();
        Self {
            sock,
            local,
            node,
            backlog: Vec::new(),
        }
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.node).expect("udp send");
    }

    pub fn send_to(&self, text: &str, to: SocketAddr) {
        self.sock.send_to(text.as_bytes(), to).expect("udp send");
    }

    pub fn send(&self, req: &Request) {
        self.send_raw(req.build(self.local, "UDP").as_bytes());
    }

    /// The next parseable message within `timeout` (unparseable datagrams are skipped).
    pub fn recv(&mut self, timeout: Duration) -> Option<SipMsg> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(m) = SipMsg::parse(&buf[..n]) {
                        return Some(m);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The first message matching `pred` within `timeout`; others are kept in the backlog.
    pub fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&SipMsg) -> bool,
    ) -> Option<SipMsg> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(m) = SipMsg::parse(&buf[..n]) {
                        if pred(&m) {
                            return Some(m);
                        }
                        self.backlog.push(m);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The final (>= 200) response to the request with `call_id` and CSeq method `method`,
    /// skipping provisional ones.
    pub fn final_response(
        &mut self,
        call_id: &str,
        method: &str,
        timeout: Duration,
    ) -> Option<SipMsg> {
        self.recv_matching(timeout, |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.call_id() == Some(call_id)
                && m.cseq()
                    .is_some_and(|(_, me)| me.eq_ignore_ascii_case(method))
        })
    }

    /// Sends `req` and returns its final response (retransmitting every 500 ms, as a UDP
    /// client transaction would, until a response arrives).
    pub fn transact(&mut self, req: &Request, timeout: Duration) -> Option<SipMsg> {
        let deadline = Instant::now() + timeout;
        let text = req.build(self.local, "UDP");
        let mut provisional = false;
        while Instant::now() < deadline {
            if !provisional {
                self.send_raw(text.as_bytes());
            }
            let wait = if provisional {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(500)
            };
            if let Some(m) = self.recv_matching(wait, |m| {
                m.status().is_some() && m.call_id() == Some(req.call_id.as_str())
            }) {
                if m.status().unwrap() >= 200 {
                    return Some(m);
                }
                provisional = true;
            }
        }
        None
    }
}

/// A SIP endpoint on one TCP connection.
pub struct TcpSip {
    pub stream: TcpStream,
    pub local: SocketAddr,
    buf: Vec<u8>,
}

impl TcpSip {
    pub fn connect(node: SocketAddr) -> Self {
        let stream =
            TcpStream::connect_timeout(&node, Duration::from_secs(5)).expect("tcp connect");
        let local = stream.local_addr().unwrap();
        Self {
            stream,
            local,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; `Err` if the node closed the connection.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, req: &Request) -> std::io::Result<()> {
        let text = req.build(self.local, "TCP");
        self.send_raw(text.as_bytes())
    }

    /// The next framed message within `timeout`. `Err(true)` = connection closed by the node,
    /// `Err(false)` = timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<SipMsg, bool> {
        let deadline = Instant::now() + timeout;
        loop {
            // Drop keep-alive CRLFs between messages.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len = head
                    .split("\r\n")
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| {
                        k.trim().eq_ignore_ascii_case("content-length")
                            || k.trim().eq_ignore_ascii_case("l")
                    })
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let bytes: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    if let Some(m) = SipMsg::parse(&bytes) {
                        return Ok(m);
                    }
                    continue;
                }
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(false);
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(true),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(false);
                }
                Err(_) => return Err(true),
            }
        }
    }

    /// The next final response within `timeout`, skipping provisional ones.
    pub fn final_response(&mut self, timeout: Duration) -> Result<SipMsg, bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.recv(left)?;
            if m.status().is_some_and(|s| s >= 200) {
                return Ok(m);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Digest

/// The parameters of one `Digest` challenge (`WWW-Authenticate` value), keys lowercased.
pub fn parse_challenge(value: &str) -> Option<Vec<(String, String)>> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = params.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
            val = val.trim().to_owned();
        }
        out.push((key, val));
    }
    Some(out)
}

pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The MD5 challenge of a 401 (algorithm MD5 or absent), with every challenge for context.
pub fn md5_challenge(resp: &SipMsg) -> Vec<(String, String)> {
    let all = resp.header_all("WWW-Authenticate");
    all.iter()
        .filter_map(|v| parse_challenge(v))
        .find(|p| param(p, "algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")))
        .unwrap_or_else(|| panic!("no MD5 Digest challenge among {all:?}:\n{}", resp.raw))
}

pub fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An `Authorization` header line answering `challenge` (MD5, qop=auth if offered).
pub fn authorization(
    challenge: &[(String, String)],
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let realm = param(challenge, "realm").expect("challenge has a realm");
    let nonce = param(challenge, "nonce").expect("challenge has a nonce");
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let qop_auth = param(challenge, "qop")
        .is_some_and(|q| q.split(',').any(|x| x.trim().eq_ignore_ascii_case("auth")));
    let mut h = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5"
    );
    if qop_auth {
        let cnonce = unique("c");
        let nc = "00000001";
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        h += &format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\"");
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        h += &format!(", response=\"{response}\"");
    }
    if let Some(opaque) = param(challenge, "opaque") {
        h += &format!(", opaque=\"{opaque}\"");
    }
    h
}
