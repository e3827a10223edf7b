//! Building the SIP messages of a call's two legs.

use std::net::SocketAddr;

use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Request, Response, StatusCode};
use switchyard_sip::transaction::{Peer, Transport};

/// Where this node is reachable for one transport: written in Via and Contact.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Local {
    pub fn via(&self, branch: &str) -> rsip::headers::Via {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.proto(),
            self.addr
        )
        .into()
    }

    pub fn contact_uri(&self) -> String {
        match self.transport {
            Transport::Udp => format!("sip:switchyard@{}", self.addr),
            Transport::Tcp => format!("sip:switchyard@{};transport=tcp", self.addr),
        }
    }

    fn proto(&self) -> &'static str {
        match self.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// The INVITE that rings an agent: a new dialog whose From carries the caller's identity.
/// Content-Length is written by `message::to_bytes` from the body.
pub struct AgentInvite<'a> {
    pub local: Local,
    pub target: &'a rsip::Uri,
    pub agent_id: &'a str,
    pub caller_user: &'a str,
    pub sip_call_id: &'a str,
    pub from_tag: &'a str,
    pub branch: &'a str,
    pub sdp: String,
    pub user_agent: &'a str,
}

impl AgentInvite<'_> {
    pub fn build(self) -> Request {
        let host = self.local.addr;
        let headers: Vec<Header> = vec![
            Header::Via(self.local.via(self.branch)),
            Header::MaxForwards("70".into()),
            Header::From(format!("<sip:{}@{host}>;tag={}", self.caller_user, self.from_tag).into()),
            Header::To(format!("<sip:{}@{host}>", self.agent_id).into()),
            Header::CallId(self.sip_call_id.into()),
            Header::CSeq("1 INVITE".into()),
            Header::Contact(format!("<{}>", self.local.contact_uri()).into()),
            Header::UserAgent(self.user_agent.into()),
            Header::Allow(crate::sip::endpoint::ALLOWED.into()),
            Header::ContentType("application/sdp".into()),
        ];
        Request {
            method: rsip::Method::Invite,
            uri: self.target.clone(),
            version: rsip::Version::V2,
            headers: headers.into(),
            body: self.sdp.into_bytes(),
        }
    }
}

/// A response to `request` carrying an SDP body and our Contact.
pub fn response_with_sdp(
    request: &Request,
    code: StatusCode,
    to_tag: &str,
    contact: &str,
    sdp: &str,
) -> Response {
    let mut response = message::response(request, code, Some(to_tag));
    response
        .headers
        .push(Header::Contact(format!("<{contact}>").into()));
    response
        .headers
        .push(Header::ContentType("application/sdp".into()));
    // `message::to_bytes` writes the Content-Length that matches the body.
    response.body = sdp.as_bytes().to_vec();
    response
}

/// The peer to send a request to for a target URI. `registered_over` is where the binding's
/// REGISTER came from: a phone registered over TCP is reached over that connection.
pub fn peer_for(target: &rsip::Uri, registered_over: Option<&Peer>) -> Option<Peer> {
    let wants_tcp = target
        .params
        .iter()
        .any(|p| matches!(p, rsip::Param::Transport(rsip::Transport::Tcp)));
    if let Some(source) = registered_over
        && source.transport == Transport::Tcp
    {
        return Some(*source);
    }
    let ip: std::net::IpAddr = match &target.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(domain) => domain.to_string().parse().ok()?,
    };
    let port = target
        .host_with_port
        .port
        .as_ref()
        .map(|p| *p.value())
        .unwrap_or(5060);
    Some(Peer {
        addr: SocketAddr::new(ip, port),
        transport: if wants_tcp {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        connection: None,
    })
}

/// The user part of a From/To URI, or the whole URI text when it has none.
pub fn uri_user(uri: &rsip::Uri) -> String {
    uri.auth
        .as_ref()
        .map(|a| a.user.clone())
        .unwrap_or_else(|| uri.to_string())
}
