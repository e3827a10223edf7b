//! RFC 3261 §12 dialogs as plain data.
//!
//! A [`Dialog`] holds only strings and integers (no sockets, no `Instant`s) so it can be archived
//! with rkyv and replicated to a standby node as is. The transaction layer knows nothing about
//! dialogs: the TU looks a dialog up by [`DialogId`], validates in-dialog requests with
//! [`Dialog::on_request`], builds requests with [`Dialog::create_request`] and hands them to the
//! transaction layer.
//!
//! Header values are kept verbatim (minus tags) rather than re-rendered through rsip's typed
//! headers: §12 requires URIs to be copied unchanged, and verbatim text survives inputs rsip's
//! typed parsers reject.

use rand::Rng;
use rand::distr::Alphanumeric;
use rsip::headers::{CSeq, CallId, Contact, From, MaxForwards, Route, To, UntypedHeader, Via};
use rsip::prelude::HeadersExt;
use rsip::{Header, Headers, Method, Request, Response, Uri};

use crate::headers::MessageExt;

/// Which side of the dialog this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Role {
    /// We sent the dialog-creating request.
    Uac,
    /// We received the dialog-creating request.
    Uas,
}

/// §12 dialog state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DialogState {
    /// Created by a provisional response (UAC) or an INVITE not yet answered 2xx (UAS).
    Early,
    /// A 2xx was sent or received.
    Confirmed,
    /// BYE, a non-2xx final to the initial INVITE, or 481/408 to an in-dialog request.
    Terminated,
}

/// Why a dialog could not be created or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header the dialog needs is absent or unusable.
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// A dialog-creating response without a To tag.
    #[error("response has no To tag")]
    MissingToTag,
    /// §12.2.2: an in-dialog request whose CSeq is below the last one seen.
    #[error("CSeq {got} is lower than the remote sequence number {remote}")]
    CSeqOutOfOrder {
        /// CSeq number of the refused request.
        got: u32,
        /// Highest CSeq number received so far.
        remote: u32,
    },
    /// ACK has [`Dialog::create_ack`]; CANCEL belongs to the transaction layer.
    #[error("{0} requests are not built by create_request")]
    UnsupportedMethod(Method),
    /// The dialog no longer accepts new requests.
    #[error("dialog is terminated")]
    Terminated,
    /// A stored URI (remote target or route) does not parse.
    #[error("unparseable URI {0:?}")]
    InvalidUri(String),
}

impl DialogError {
    /// The final response a UAS sends for a request refused with this error (§12.2.2: 500 for
    /// an out-of-order CSeq; 400 for malformed requests).
    pub fn status_code(&self) -> u16 {
        match self {
            DialogError::CSeqOutOfOrder { .. } => 500,
            _ => 400,
        }
    }
}

/// Identifies a dialog from this node's point of view (§12).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag (empty for an RFC 2543 peer that sent no From tag).
    pub remote_tag: String,
}

/// The dialog an incoming in-dialog request belongs to (UAS view: local tag = To tag).
///
/// `None` when the request has no To tag, i.e. it is not inside a dialog.
pub fn dialog_id_of_incoming_request(request: &Request) -> Option<DialogId> {
    Some(DialogId {
        call_id: request.call_id()?.to_string(),
        local_tag: request.to_tag()?,
        remote_tag: request.from_tag().unwrap_or_default(),
    })
}

/// The dialog an incoming response belongs to (UAC view: local tag = From tag).
///
/// `None` when the response has no To tag (a 100 Trying, or an RFC 2543 peer).
pub fn dialog_id_of_incoming_response(response: &Response) -> Option<DialogId> {
    Some(DialogId {
        call_id: response.call_id()?.to_string(),
        local_tag: response.from_tag()?,
        remote_tag: response.to_tag()?,
    })
}

/// A fresh From/To tag: 10 alphanumeric characters, about 59 bits of entropy.
pub fn new_tag() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect()
}

/// RFC 3261 §12 dialog state, replicable as is.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our From (UAC) / To (UAS) value without tag, e.g. `"Agent" <sip:4001@cc.example>`.
    pub local_uri: String,
    /// The peer's name-addr without tag.
    pub remote_uri: String,
    /// The peer's Contact URI: Request-URI of in-dialog requests.
    pub remote_target: String,
    /// Route set entries as written in Record-Route, e.g. `<sip:p1.example;lr>`, in the order
    /// requests must carry them.
    pub route_set: Vec<String>,
    /// CSeq number of the last request we sent in this dialog.
    pub local_cseq: u32,
    /// Highest CSeq number received, `None` until the peer sends an in-dialog request (UAC).
    pub remote_cseq: Option<u32>,
    /// Our Contact header value, sent in target-refresh requests.
    pub local_contact: String,
    /// UAC or UAS.
    pub role: Role,
    /// Early, confirmed or terminated.
    pub state: DialogState,
    /// The dialog-creating Request-URI was a SIPS URI.
    pub secure: bool,
}

impl Dialog {
    /// UAS side of a dialog created by an incoming INVITE (§12.1.1). The dialog starts early;
    /// [`Dialog::confirm`] once the 2xx is sent.
    ///
    /// A missing Contact is a [`DialogError::BadHeader`] the node answers with 400.
    pub fn new_uas(
        invite: &Request,
        local_tag: &str,
        local_contact: &str,
    ) -> Result<Dialog, DialogError> {
        let call_id = invite.call_id().ok_or(DialogError::BadHeader("Call-ID"))?;
        let (remote_cseq, _) = invite.cseq().ok_or(DialogError::BadHeader("CSeq"))?;
        let from = invite
            .from_header()
            .map_err(|_| DialogError::BadHeader("From"))?;
        let to = invite
            .to_header()
            .map_err(|_| DialogError::BadHeader("To"))?;
        Ok(Dialog {
            call_id: call_id.to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: invite.from_tag().unwrap_or_default(),
            local_uri: without_tag(to.value()),
            remote_uri: without_tag(from.value()),
            remote_target: contact_uri(invite)?,
            route_set: record_route(&invite.headers),
            local_cseq: 0,
            remote_cseq: Some(remote_cseq),
            local_contact: local_contact.to_string(),
            role: Role::Uas,
            state: DialogState::Early,
            secure: is_sips(&invite.uri),
        })
    }

    /// UAC side of a dialog created by a response to our INVITE (§12.1.2): a 1xx with a To tag
    /// gives an early dialog, a 2xx a confirmed one. The route set is the response's
    /// Record-Route in reverse.
    pub fn new_uac(invite: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let call_id = invite.call_id().ok_or(DialogError::BadHeader("Call-ID"))?;
        let (local_cseq, _) = invite.cseq().ok_or(DialogError::BadHeader("CSeq"))?;
        let local_tag = invite.from_tag().ok_or(DialogError::BadHeader("From"))?;
        let remote_tag = response.to_tag().ok_or(DialogError::MissingToTag)?;
        let from = invite
            .from_header()
            .map_err(|_| DialogError::BadHeader("From"))?;
        let to = response
            .to_header()
            .map_err(|_| DialogError::BadHeader("To"))?;
        let local_contact = invite
            .contact_header()
            .map_err(|_| DialogError::BadHeader("Contact"))?;
        let mut route_set = record_route(&response.headers);
        route_set.reverse();
        let state = if response.status_code.code() >= 200 {
            DialogState::Confirmed
        } else {
            DialogState::Early
        };
        Ok(Dialog {
            call_id: call_id.to_string(),
            local_tag,
            remote_tag,
            local_uri: without_tag(from.value()),
            remote_uri: without_tag(to.value()),
            remote_target: contact_uri(response)?,
            route_set,
            local_cseq,
            remote_cseq: None,
            local_contact: local_contact.value().to_string(),
            role: Role::Uac,
            state,
            secure: is_sips(&invite.uri),
        })
    }

    /// This dialog's identifier.
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
        }
    }

    /// UAS: the 2xx to the initial INVITE was sent.
    pub fn confirm(&mut self) {
        if self.state == DialogState::Early {
            self.state = DialogState::Confirmed;
        }
    }

    /// Builds an in-dialog request (§12.2.1.1) and increments the local CSeq.
    ///
    /// `via` must carry a fresh branch. The Request-URI and Route headers follow the route set,
    /// loose (`;lr` on the first entry) or strict. Contact is added to target-refresh requests;
    /// the caller adds Content-Type and any other header to the result, and
    /// [`crate::message::to_bytes`] writes Content-Length.
    pub fn create_request(
        &mut self,
        method: Method,
        via: Via,
        body: Vec<u8>,
    ) -> Result<Request, DialogError> {
        if matches!(method, Method::Ack | Method::Cancel) {
            return Err(DialogError::UnsupportedMethod(method));
        }
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let cseq = self.local_cseq.wrapping_add(1);
        let request = self.build(method, cseq, via, body)?;
        self.local_cseq = cseq;
        Ok(request)
    }

    /// Builds the ACK for a 2xx to the INVITE with CSeq `invite_cseq` (§13.2.2.4): same CSeq
    /// number, a new branch in `via`, routed like any in-dialog request. `body` carries the
    /// answer when the offer was in the 2xx.
    pub fn create_ack(
        &self,
        invite_cseq: u32,
        via: Via,
        body: Vec<u8>,
    ) -> Result<Request, DialogError> {
        self.build(Method::Ack, invite_cseq, via, body)
    }

    /// Validates and applies an incoming in-dialog request (§12.2.2): refuses CSeq numbers below
    /// the last one seen (answer [`DialogError::status_code`], 500), records the CSeq, takes the
    /// new Contact of a target-refresh request, and terminates the dialog on BYE.
    pub fn on_request(&mut self, request: &Request) -> Result<(), DialogError> {
        let (cseq, _) = request.cseq().ok_or(DialogError::BadHeader("CSeq"))?;
        // ACK and CANCEL reuse the INVITE's number: they neither advance nor violate the order.
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            if let Some(remote) = self.remote_cseq
                && cseq < remote
            {
                return Err(DialogError::CSeqOutOfOrder { got: cseq, remote });
            }
            self.remote_cseq = Some(cseq);
        }
        if is_target_refresh(request.method) && request.contact_header().is_ok() {
            self.remote_target = contact_uri(request)?;
        }
        if request.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// Applies a response to a request we sent in this dialog (§12.2.1.2, §13.2.2.4): a 2xx
    /// confirms an early dialog and recomputes its route set; 1xx/2xx to target-refresh requests
    /// update the remote target; a non-2xx final to the initial INVITE, a 481 or 408, or a
    /// final response to BYE terminate the dialog.
    pub fn on_response(&mut self, method: Method, response: &Response) -> Result<(), DialogError> {
        let code = response.status_code.code();
        if (method == Method::Bye && code >= 200) || code == 481 || code == 408 {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        let early_invite = method == Method::Invite && self.state == DialogState::Early;
        if (200..300).contains(&code) && early_invite {
            self.state = DialogState::Confirmed;
            if self.role == Role::Uac {
                let mut route_set = record_route(&response.headers);
                route_set.reverse();
                self.route_set = route_set;
            }
        } else if code >= 300 && early_invite {
            self.state = DialogState::Terminated;
            return Ok(());
        }
        if code < 300 && is_target_refresh(method) && response.contact_header().is_ok() {
            self.remote_target = contact_uri(response)?;
        }
        Ok(())
    }

    /// Raises the local CSeq to at least `floor`: a standby taking over must number its requests
    /// above anything the failed node may have sent.
    pub fn set_local_cseq_floor(&mut self, floor: u32) {
        self.local_cseq = self.local_cseq.max(floor);
    }

    fn build(
        &self,
        method: Method,
        cseq: u32,
        via: Via,
        body: Vec<u8>,
    ) -> Result<Request, DialogError> {
        let target = parse_uri(&self.remote_target)?;
        let strict = self
            .route_set
            .first()
            .filter(|first| !is_loose_route(first));
        let (uri, routes): (Uri, Vec<String>) = match strict {
            // §12.2.1.1 strict routing: the first hop goes to the Request-URI and the remote
            // target travels as the last Route.
            Some(first) => {
                let mut routes = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (parse_uri(route_uri(first))?, routes)
            }
            None => (target, self.route_set.clone()),
        };

        let mut headers = Headers::default();
        headers.push(Header::Via(via));
        headers.push(Header::MaxForwards(MaxForwards::new("70")));
        for route in routes {
            headers.push(Header::Route(Route::new(route)));
        }
        headers.push(Header::From(From::new(with_tag(
            &self.local_uri,
            &self.local_tag,
        ))));
        headers.push(Header::To(To::new(with_tag(
            &self.remote_uri,
            &self.remote_tag,
        ))));
        headers.push(Header::CallId(CallId::new(self.call_id.clone())));
        headers.push(Header::CSeq(CSeq::new(format!("{cseq} {method}"))));
        if is_target_refresh(method) {
            headers.push(Header::Contact(Contact::new(self.local_contact.clone())));
        }
        Ok(Request {
            method,
            uri,
            version: rsip::Version::V2,
            headers,
            body,
        })
    }
}

/// Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665).
fn is_target_refresh(method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    )
}

fn is_sips(uri: &Uri) -> bool {
    matches!(uri.scheme, Some(rsip::Scheme::Sips))
}

/// rsip's URI tokenizer reads a dotted user part (`sip:first.last@host`) as part of the host,
/// but renders it back unchanged, and the rendered Request-URI is all a dialog needs.
fn parse_uri(text: &str) -> Result<Uri, DialogError> {
    crate::message::parse_uri(text).map_err(|_| DialogError::InvalidUri(text.to_string()))
}

fn with_tag(name_addr: &str, tag: &str) -> String {
    if tag.is_empty() {
        name_addr.to_string()
    } else {
        format!("{name_addr};tag={tag}")
    }
}

/// Index where a From/To/Contact value's header parameters start: after `>` for a name-addr,
/// at the first `;` for a bare addr-spec (whose `;` parameters are header parameters, §20).
fn header_params_start(value: &str) -> usize {
    match value.rfind('>') {
        Some(end) => end + 1,
        None => value.find(';').unwrap_or(value.len()),
    }
}

/// A From/To value with its `tag` parameter removed, everything else verbatim.
fn without_tag(value: &str) -> String {
    let (addr, params) = value.split_at(header_params_start(value));
    let mut out = addr.trim().to_string();
    for param in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let name = param.split('=').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("tag") {
            out.push(';');
            out.push_str(param);
        }
    }
    out
}

/// The URI of a name-addr (`<...>`) or addr-spec.
fn route_uri(entry: &str) -> &str {
    match (entry.find('<'), entry.rfind('>')) {
        (Some(start), Some(end)) if start < end => &entry[start + 1..end],
        _ => &entry[..header_params_start(entry)],
    }
    .trim()
}

/// The first Contact's URI; §12.1 needs it as the remote target.
fn contact_uri(message: &impl HeadersExt) -> Result<String, DialogError> {
    let contact = message
        .contact_header()
        .map_err(|_| DialogError::BadHeader("Contact"))?;
    let uri = route_uri(contact.value());
    if uri.is_empty() || uri == "*" {
        return Err(DialogError::BadHeader("Contact"));
    }
    Ok(uri.to_string())
}

/// `;lr` among the URI parameters marks a loose router (RFC 3261 §16.12.1.1).
fn is_loose_route(entry: &str) -> bool {
    route_uri(entry)
        .split(';')
        .skip(1)
        .any(|param| param.split('=').next().unwrap_or_default().trim() == "lr")
}

/// All Record-Route entries in message order ([`crate::message::parse`] gives each its own
/// header).
fn record_route(headers: &Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|header| match header {
            Header::RecordRoute(rr) => Some(rr.value().trim().to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match crate::message::parse(text.replace('\n', "\r\n").as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response(text: &str) -> Response {
        match crate::message::parse(text.replace('\n', "\r\n").as_bytes()) {
            Ok(rsip::SipMessage::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    fn via() -> Via {
        Via::new("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnew")
    }

    fn header<'a>(req: &'a Request, pick: fn(&'a Header) -> Option<&'a str>) -> Vec<&'a str> {
        req.headers.iter().filter_map(pick).collect()
    }

    fn routes(req: &Request) -> Vec<&str> {
        header(req, |h| match h {
            Header::Route(r) => Some(r.value()),
            _ => None,
        })
    }

    const INVITE: &str = "INVITE sip:4001@cc.example SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>
Record-Route: <sip:p3.example;lr>
Max-Forwards: 70
From: \"Caller\" <sip:alice@example.com>;tag=abc
To: <sip:4001@cc.example>
Call-ID: call-1
CSeq: 10 INVITE
Contact: <sip:alice@192.0.2.1:5060>
Content-Length: 0

";

    fn uas() -> Dialog {
        Dialog::new_uas(&request(INVITE), "ourtag", "<sip:node@10.0.0.1:5060>").expect("dialog")
    }

    #[test]
    fn uas_dialog_from_invite() {
        let d = uas();
        assert_eq!(d.call_id, "call-1");
        assert_eq!(d.remote_tag, "abc");
        assert_eq!(d.local_tag, "ourtag");
        assert_eq!(d.remote_uri, "\"Caller\" <sip:alice@example.com>");
        assert_eq!(d.local_uri, "<sip:4001@cc.example>");
        assert_eq!(d.remote_target, "sip:alice@192.0.2.1:5060");
        assert_eq!(
            d.route_set,
            [
                "<sip:p1.example;lr>",
                "<sip:p2.example;lr>",
                "<sip:p3.example;lr>"
            ]
        );
        assert_eq!(d.remote_cseq, Some(10));
        assert_eq!(d.role, Role::Uas);
        assert_eq!(d.state, DialogState::Early);
        assert!(!d.secure);
        assert_eq!(
            d.id(),
            dialog_id_of_incoming_request(&request(&INVITE.replace(
                "To: <sip:4001@cc.example>",
                "To: <sip:4001@cc.example>;tag=ourtag"
            )))
            .expect("in-dialog")
        );
    }

    #[test]
    fn uas_dialog_needs_contact() {
        let invite = request(&INVITE.replace("Contact: <sip:alice@192.0.2.1:5060>\n", ""));
        let err = Dialog::new_uas(&invite, "t", "<sip:n@h>").expect_err("no contact");
        assert_eq!(err, DialogError::BadHeader("Contact"));
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn loose_routing_keeps_target_in_request_uri() {
        let mut d = uas();
        d.confirm();
        let bye = d
            .create_request(Method::Bye, via(), Vec::new())
            .expect("bye");
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.1:5060");
        assert_eq!(
            routes(&bye),
            [
                "<sip:p1.example;lr>",
                "<sip:p2.example;lr>",
                "<sip:p3.example;lr>"
            ]
        );
        assert_eq!(bye.cseq(), Some((1, Method::Bye)));
        assert_eq!(bye.from_tag().as_deref(), Some("ourtag"));
        assert_eq!(bye.to_tag().as_deref(), Some("abc"));
        assert_eq!(bye.call_id(), Some("call-1"));
        assert_eq!(bye.max_forwards(), Some(70));
        assert!(bye.contact_header().is_err(), "BYE is not a target refresh");
        assert_eq!(d.local_cseq, 1);
    }

    #[test]
    fn dotted_user_in_remote_target_survives() {
        let invite = request(&INVITE.replace(
            "Contact: <sip:alice@192.0.2.1:5060>",
            "Contact: <sip:alice.smith@192.0.2.1:5060>",
        ));
        let mut d = Dialog::new_uas(&invite, "t", "<sip:n@h>").expect("dialog");
        let bye = d
            .create_request(Method::Bye, via(), Vec::new())
            .expect("bye");
        assert_eq!(bye.uri.to_string(), "sip:alice.smith@192.0.2.1:5060");
    }

    #[test]
    fn strict_routing_puts_first_route_in_request_uri() {
        let invite = request(&INVITE.replace(
            "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\nRecord-Route: <sip:p3.example;lr>\n",
            "Record-Route: <sip:strict.example;maddr=10.1.1.1>, <sip:p2.example;lr>\n",
        ));
        let mut d = Dialog::new_uas(&invite, "ourtag", "<sip:node@10.0.0.1>").expect("dialog");
        let req = d
            .create_request(Method::Info, via(), Vec::new())
            .expect("info");
        assert_eq!(req.uri.to_string(), "sip:strict.example;maddr=10.1.1.1");
        assert_eq!(
            routes(&req),
            ["<sip:p2.example;lr>", "<sip:alice@192.0.2.1:5060>"]
        );
    }

    #[test]
    fn uac_dialog_reverses_record_route_and_acks() {
        let invite = request(&INVITE.replace("Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\nRecord-Route: <sip:p3.example;lr>\n", ""));
        let ok = response(
            "SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111
Record-Route: <sip:p1.example;lr>
Record-Route: <sip:p2.example;lr>
From: \"Caller\" <sip:alice@example.com>;tag=abc
To: <sip:4001@cc.example>;tag=xyz
Call-ID: call-1
CSeq: 10 INVITE
Contact: \"Agent\" <sip:4001@10.9.9.9:5070;transport=udp>;expires=60
Content-Length: 0

",
        );
        let mut d = Dialog::new_uac(&invite, &ok).expect("dialog");
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.role, Role::Uac);
        assert_eq!(d.local_tag, "abc");
        assert_eq!(d.remote_tag, "xyz");
        assert_eq!(d.remote_target, "sip:4001@10.9.9.9:5070;transport=udp");
        assert_eq!(d.route_set, ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]);
        assert_eq!(d.local_contact, "<sip:alice@192.0.2.1:5060>");
        assert_eq!(d.id(), dialog_id_of_incoming_response(&ok).expect("id"));

        let ack = d.create_ack(10, via(), Vec::new()).expect("ack");
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.cseq(), Some((10, Method::Ack)));
        assert_eq!(ack.top_branch().as_deref(), Some("z9hG4bKnew"));
        assert_eq!(d.local_cseq, 10, "ACK does not consume a CSeq");

        let reinvite = d
            .create_request(Method::Invite, via(), b"v=0\r\n".to_vec())
            .expect("re-invite");
        assert_eq!(reinvite.cseq(), Some((11, Method::Invite)));
        assert!(reinvite.contact_header().is_ok());
        assert_eq!(reinvite.from_tag().as_deref(), Some("abc"));
        assert_eq!(reinvite.to_tag().as_deref(), Some("xyz"));
        assert_eq!(
            d.create_request(Method::Cancel, via(), Vec::new()),
            Err(DialogError::UnsupportedMethod(Method::Cancel))
        );
    }

    #[test]
    fn uac_early_dialog_confirmed_by_2xx_recomputes_routes() {
        let invite = request(INVITE);
        let ringing_text = "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111
Record-Route: <sip:old.example;lr>
From: <sip:alice@example.com>;tag=abc
To: <sip:4001@cc.example>;tag=xyz
Call-ID: call-1
CSeq: 10 INVITE
Contact: <sip:4001@10.9.9.9>
Content-Length: 0

";
        let ringing = response(ringing_text);
        let mut d = Dialog::new_uac(&invite, &ringing).expect("early dialog");
        assert_eq!(d.state, DialogState::Early);
        let ok = response(
            &ringing_text
                .replace("180 Ringing", "200 OK")
                .replace("old.example", "new.example")
                .replace("10.9.9.9", "10.8.8.8"),
        );
        d.on_response(Method::Invite, &ok).expect("2xx");
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.route_set, ["<sip:new.example;lr>"]);
        assert_eq!(d.remote_target, "sip:4001@10.8.8.8");

        let no_tag = response(&ringing_text.replace(";tag=xyz", ""));
        assert_eq!(
            Dialog::new_uac(&invite, &no_tag),
            Err(DialogError::MissingToTag)
        );
    }

    #[test]
    fn early_dialog_terminated_by_error_response() {
        let invite = request(INVITE);
        let progress = "SIP/2.0 183 Session Progress
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111
From: <sip:alice@example.com>;tag=abc
To: <sip:4001@cc.example>;tag=xyz
Call-ID: call-1
CSeq: 10 INVITE
Contact: <sip:4001@10.9.9.9>
Content-Length: 0

";
        let mut d = Dialog::new_uac(&invite, &response(progress)).expect("early dialog");
        let busy = response(&progress.replace("183 Session Progress", "486 Busy Here"));
        d.on_response(Method::Invite, &busy).expect("486");
        assert_eq!(d.state, DialogState::Terminated);
        assert_eq!(
            d.create_request(Method::Bye, via(), Vec::new()),
            Err(DialogError::Terminated)
        );
    }

    #[test]
    fn remote_cseq_ordering_and_target_refresh() {
        let mut d = uas();
        d.confirm();
        let in_dialog = |method: &str, cseq: u32, contact: &str| {
            request(&format!(
                "{method} sip:node@10.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{cseq}{method}
From: <sip:alice@example.com>;tag=abc
To: <sip:4001@cc.example>;tag=ourtag
Call-ID: call-1
CSeq: {cseq} {method}
{contact}Content-Length: 0

"
            ))
        };
        // ACK carries the INVITE's number and neither advances nor violates the order.
        d.on_request(&in_dialog("ACK", 10, "")).expect("ack");
        d.on_request(&in_dialog("INFO", 11, "")).expect("info");
        assert_eq!(d.remote_cseq, Some(11));
        let err = d
            .on_request(&in_dialog("INFO", 9, ""))
            .expect_err("old cseq");
        assert_eq!(err, DialogError::CSeqOutOfOrder { got: 9, remote: 11 });
        assert_eq!(err.status_code(), 500);
        assert_eq!(d.remote_cseq, Some(11));

        d.on_request(&in_dialog(
            "INVITE",
            12,
            "Contact: <sip:alice@192.0.2.99>\n",
        ))
        .expect("re-invite");
        assert_eq!(d.remote_target, "sip:alice@192.0.2.99");
        d.on_request(&in_dialog("INFO", 13, "Contact: <sip:ignored@192.0.2.7>\n"))
            .expect("info");
        assert_eq!(
            d.remote_target, "sip:alice@192.0.2.99",
            "INFO is no target refresh"
        );

        d.on_request(&in_dialog("BYE", 14, "")).expect("bye");
        assert_eq!(d.state, DialogState::Terminated);
    }

    #[test]
    fn cseq_floor_for_failover() {
        let mut d = uas();
        d.set_local_cseq_floor(1000);
        d.set_local_cseq_floor(5);
        assert_eq!(d.local_cseq, 1000);
        let bye = d
            .create_request(Method::Bye, via(), Vec::new())
            .expect("bye");
        assert_eq!(bye.cseq(), Some((1001, Method::Bye)));
    }

    #[test]
    fn rkyv_round_trip() {
        let d = uas();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&d).expect("archive");
        let back = rkyv::from_bytes::<Dialog, rkyv::rancor::Error>(&bytes).expect("unarchive");
        assert_eq!(back, d);
    }

    #[test]
    fn tags_are_short_and_distinct() {
        let (a, b) = (new_tag(), new_tag());
        assert_eq!(a.len(), 10);
        assert_ne!(a, b);
    }

    #[test]
    fn header_text_helpers() {
        assert_eq!(without_tag("<sip:a@b>;tag=1;x=y"), "<sip:a@b>;x=y");
        assert_eq!(without_tag("sip:a@b;TAG=1"), "sip:a@b");
        assert_eq!(
            without_tag("\"A;B\" <sip:a@b;lr>;tag=1"),
            "\"A;B\" <sip:a@b;lr>"
        );
        assert!(is_loose_route("<sip:p;lr>"));
        assert!(is_loose_route("<sip:p;transport=tcp;lr=on>"));
        assert!(!is_loose_route("<sip:p>;lr"));
    }
}
