//! The registrar (RFC 3261 §10.3): who is reachable where.
//!
//! Pure state fed requests and the current time, so every rule (digest challenge, expiry bounds,
//! throttling of failed attempts, out-of-order refreshes) is unit-tested without a socket. The
//! endpoint task calls [`Registrar::handle_register`]; call actors read
//! [`Registrar::contacts`] when they ring an agent.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use switchyard_sip::digest::{Algorithm, AuthError, DigestVerifier};
use switchyard_sip::headers::{MessageExt, header_param, name_addr_uri};
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Request, Response, StatusCode, prelude::*};
use switchyard_sip::transaction::Peer;

use crate::config::RegistrarConfig;

/// One registered contact of an address-of-record.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The Contact URI, where requests for the user are sent.
    pub uri: rsip::Uri,
    /// Unix milliseconds after which the binding is gone.
    pub expires_at_ms: u64,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER came from (transport and TCP connection to reuse).
    pub source: Peer,
}

/// A user's set of contacts changed (one added, removed or expired; refreshes change nothing),
/// so the node can tell the agent actor, wherever it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingChange {
    pub user: String,
    /// The contact URIs now, most recently refreshed first; empty once the last one is gone.
    pub contacts: Vec<String>,
}

struct FailureWindow {
    started_ms: u64,
    failures: u32,
}

pub struct Registrar {
    config: RegistrarConfig,
    verifier: DigestVerifier,
    passwords: HashMap<String, String>,
    bindings: HashMap<String, Vec<Binding>>,
    failures: HashMap<IpAddr, FailureWindow>,
}

impl Registrar {
    /// `passwords` maps each user (agent extension) to its digest password; `secret` keys the
    /// stateless nonces and should differ per deployment.
    pub fn new(
        config: RegistrarConfig,
        passwords: HashMap<String, String>,
        secret: [u8; 32],
    ) -> Self {
        let algorithms: Vec<Algorithm> = config
            .digest_algorithms
            .iter()
            .filter_map(|name| Algorithm::from_name(name))
            .collect();
        let verifier = DigestVerifier::new(
            config.realm.as_str(),
            secret.to_vec(),
            config.nonce_ttl_secs,
        )
        .with_algorithms(&algorithms);
        Self {
            config,
            verifier,
            passwords,
            bindings: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    /// Current contacts of `user`, most recently refreshed first.
    pub fn contacts(&self, user: &str, now_ms: u64) -> Vec<Binding> {
        let mut list: Vec<Binding> = self
            .bindings
            .get(user)
            .map(|b| {
                b.iter()
                    .filter(|b| b.expires_at_ms > now_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by_key(|b| std::cmp::Reverse(b.expires_at_ms));
        list
    }

    /// Number of users with at least one binding.
    pub fn registered_users(&self) -> usize {
        self.bindings.len()
    }

    /// Drops expired bindings; returns the users who lost any.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<BindingChange> {
        let mut changed = Vec::new();
        for (user, list) in &mut self.bindings {
            let before = list.len();
            list.retain(|b| b.expires_at_ms > now_ms);
            if list.len() != before {
                changed.push(user.clone());
            }
        }
        self.bindings.retain(|_, list| !list.is_empty());
        let changes: Vec<BindingChange> = changed
            .into_iter()
            .map(|user| self.change(user, now_ms))
            .collect();
        let window = self.config.failure_window_secs * 1000;
        self.failures
            .retain(|_, w| now_ms.saturating_sub(w.started_ms) < window);
        changes
    }

    fn change(&self, user: String, now_ms: u64) -> BindingChange {
        let contacts = self
            .contacts(&user, now_ms)
            .iter()
            .map(|b| b.uri.to_string())
            .collect();
        BindingChange { user, contacts }
    }

    fn uris(&self, user: &str) -> BTreeSet<String> {
        self.bindings
            .get(user)
            .map(|list| list.iter().map(|b| b.uri.to_string()).collect())
            .unwrap_or_default()
    }

    /// Handles one REGISTER: authenticates it, applies its contacts, and returns the response.
    pub fn handle_register(
        &mut self,
        request: &Request,
        from: &Peer,
        now_ms: u64,
    ) -> (Response, Option<BindingChange>) {
        let source_ip = from.addr.ip();
        if self.throttled(source_ip, now_ms) {
            return (
                reason(
                    message::response(request, StatusCode::Forbidden, None),
                    "Too Many Failed Attempts",
                ),
                None,
            );
        }
        // An address-of-record that is not a SIP user here cannot be registered (§10.3 step 3).
        let Some(user) = aor_user(request) else {
            return (message::response(request, StatusCode::NotFound, None), None);
        };
        let now_secs = now_ms / 1000;
        let authorization = request.headers.iter().find_map(|h| match h {
            Header::Authorization(a) => Some(a.value().to_owned()),
            _ => None,
        });
        let Some(authorization) = authorization else {
            return (self.challenge(request, now_secs, false), None);
        };
        let passwords = &self.passwords;
        let verified = self
            .verifier
            .verify(&authorization, "REGISTER", now_secs, |username| {
                passwords.get(username).cloned()
            });
        match verified {
            Ok(username) if username == user => {}
            // Another scheme (Basic, say) counts as no credentials (RFC 4475 regaut01).
            Err(AuthError::NotDigest) => return (self.challenge(request, now_secs, false), None),
            Ok(_) => {
                // Authenticated, but as somebody else: a phone may only register itself.
                self.record_failure(source_ip, now_ms);
                return (
                    reason(
                        message::response(request, StatusCode::Forbidden, None),
                        "Forbidden - Credentials Do Not Match To",
                    ),
                    None,
                );
            }
            Err(AuthError::Stale) => return (self.challenge(request, now_secs, true), None),
            Err(err) => {
                self.record_failure(source_ip, now_ms);
                tracing::info!(%user, source = %from.addr, error = %err, "REGISTER authentication failed");
                return (
                    reason(
                        message::response(request, StatusCode::Forbidden, None),
                        "Forbidden",
                    ),
                    None,
                );
            }
        }
        self.apply_contacts(request, &user, from, now_ms)
    }

    fn challenge(&self, request: &Request, now_secs: u64, stale: bool) -> Response {
        let mut response = message::response(request, StatusCode::Unauthorized, None);
        for value in self.verifier.challenge(now_secs, stale) {
            response.headers.push(Header::WwwAuthenticate(value.into()));
        }
        response
    }

    fn throttled(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.failures.get(&ip).is_some_and(|w| {
            now_ms.saturating_sub(w.started_ms) < self.config.failure_window_secs * 1000
                && w.failures >= self.config.failure_limit
        })
    }

    fn record_failure(&mut self, ip: IpAddr, now_ms: u64) {
        metrics::counter!("registrar_auth_failures_total").increment(1);
        let window = self.config.failure_window_secs * 1000;
        let entry = self.failures.entry(ip).or_insert(FailureWindow {
            started_ms: now_ms,
            failures: 0,
        });
        if now_ms.saturating_sub(entry.started_ms) >= window {
            *entry = FailureWindow {
                started_ms: now_ms,
                failures: 0,
            };
        }
        entry.failures += 1;
    }

    fn apply_contacts(
        &mut self,
        request: &Request,
        user: &str,
        from: &Peer,
        now_ms: u64,
    ) -> (Response, Option<BindingChange>) {
        let bad = |why: &str| {
            (
                reason(
                    message::response(request, StatusCode::BadRequest, None),
                    why,
                ),
                None,
            )
        };
        let (Some(call_id), Some((cseq, _))) = (request.call_id(), request.cseq()) else {
            return bad("Bad Request - Missing Call-ID or CSeq");
        };
        let header_expires = request.expires();
        let mut contacts = Vec::new();
        let mut wildcard = false;
        for header in request.headers.iter() {
            let Header::Contact(contact) = header else {
                continue;
            };
            for item in split_list(contact.value()) {
                if item.trim() == "*" {
                    wildcard = true;
                    continue;
                }
                let Some((uri, params)) = name_addr_uri(item) else {
                    return bad("Bad Request - Malformed Contact");
                };
                let expires = match header_param(params, "expires") {
                    Some(value) => match value.parse::<u32>() {
                        Ok(secs) => secs,
                        Err(_) => return bad("Bad Request - Malformed Contact expires"),
                    },
                    None => header_expires.unwrap_or(self.config.default_expires),
                };
                contacts.push((uri, expires));
            }
        }
        let before = self.uris(user);
        if wildcard {
            // RFC 3261 §10.3 step 6: "*" only with Expires: 0 and no other contact.
            if header_expires != Some(0) || !contacts.is_empty() {
                return bad("Bad Request - Wildcard Contact Needs Expires 0");
            }
            self.bindings.remove(user);
        }
        for (_, expires) in &contacts {
            if *expires != 0 && *expires < self.config.min_expires {
                let mut response = message::response(request, StatusCode::IntervalTooBrief, None);
                response.headers.push(Header::MinExpires(
                    self.config.min_expires.to_string().into(),
                ));
                return (response, None);
            }
        }
        let list = self.bindings.entry(user.to_owned()).or_default();
        for (uri, expires) in contacts {
            let existing = list.iter().position(|b| same_contact(&b.uri, &uri));
            if let Some(i) = existing
                && list[i].call_id == call_id
                && cseq <= list[i].cseq
            {
                // An older refresh overtaken by a newer one (§10.3 step 7).
                continue;
            }
            if expires == 0 {
                if let Some(i) = existing {
                    list.remove(i);
                }
                continue;
            }
            let binding = Binding {
                uri,
                expires_at_ms: now_ms + u64::from(expires.min(self.config.max_expires)) * 1000,
                call_id: call_id.to_owned(),
                cseq,
                source: *from,
            };
            match existing {
                Some(i) => list[i] = binding,
                None => list.push(binding),
            }
        }
        if list.is_empty() {
            self.bindings.remove(user);
        }
        let mut response = message::response(request, StatusCode::OK, None);
        for binding in self.contacts(user, now_ms) {
            let remaining = binding.expires_at_ms.saturating_sub(now_ms).div_ceil(1000);
            response.headers.push(Header::Contact(
                format!("<{}>;expires={remaining}", binding.uri).into(),
            ));
        }
        let change = (self.uris(user) != before).then(|| self.change(user.to_owned(), now_ms));
        (response, change)
    }
}

fn reason(mut response: Response, phrase: &str) -> Response {
    response.status_code = match response.status_code {
        StatusCode::Other(code, _) => StatusCode::Other(code, phrase.to_owned()),
        code => StatusCode::Other(code.code(), phrase.to_owned()),
    };
    response
}

/// The user part of the To URI: the address-of-record being registered. `None` for a URI
/// that is not SIP or SIPS.
fn aor_user(request: &Request) -> Option<String> {
    request
        .to_uri()?
        .auth
        .map(|a| a.user)
        .filter(|u| !u.is_empty())
}

/// Contact URIs compare by scheme, user, host and port (RFC 3261 §19.1.4, simplified: URI
/// parameters other than transport rarely differ between refreshes of one phone).
fn same_contact(a: &rsip::Uri, b: &rsip::Uri) -> bool {
    a.scheme == b.scheme
        && a.auth.as_ref().map(|x| &x.user) == b.auth.as_ref().map(|x| &x.user)
        && a.host_with_port == b.host_with_port
}

/// Splits a comma-separated header value, ignoring commas inside quotes and angle brackets.
fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut in_quotes, mut in_angle) = (0, false, false);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    items.push(&value[start..]);
    items.retain(|s| !s.trim().is_empty());
    items
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use md5::{Digest, Md5};
    use switchyard_sip::headers::header_param;
    use switchyard_sip::rsip::SipMessage;
    use switchyard_sip::transaction::Transport;

    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn registrar(config: RegistrarConfig) -> Registrar {
        let passwords = [("2001".to_owned(), "pw2001".to_owned())].into();
        Registrar::new(config, passwords, [7; 32])
    }

    fn peer(ip: [u8; 4]) -> Peer {
        Peer {
            addr: SocketAddr::from((ip, 5062)),
            transport: Transport::Udp,
            connection: None,
        }
    }

    fn register(cseq: u32, contact: &str, extra: &str) -> Request {
        let text = format!(
            "REGISTER sip:switchyard SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:2001@switchyard>;tag=a\r\nTo: <sip:2001@switchyard>\r\n\
             Call-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    /// Answers the MD5 challenge of `challenge` as a phone would.
    fn authorized(mut request: Request, challenge: &Response, password: &str) -> Request {
        let value = challenge
            .headers
            .iter()
            .find_map(|h| match h {
                Header::WwwAuthenticate(w) if w.value().contains("MD5") => {
                    Some(w.value().to_owned())
                }
                _ => None,
            })
            .expect("MD5 challenge");
        let params = value.trim_start_matches("Digest ").replace(", ", ";");
        let nonce = header_param(&params, "nonce").expect("nonce");
        let hex = |s: String| format!("{:x}", Md5::digest(s.as_bytes()));
        let ha1 = hex(format!("2001:switchyard:{password}"));
        let ha2 = hex("REGISTER:sip:switchyard".to_owned());
        let response = hex(format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let header = format!(
            "Digest username=\"2001\", realm=\"switchyard\", nonce=\"{nonce}\", uri=\"sip:switchyard\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
        );
        request.headers.push(Header::Authorization(header.into()));
        request
    }

    fn register_ok(r: &mut Registrar, cseq: u32, contact: &str, extra: &str, now: u64) -> Response {
        let src = peer([10, 0, 0, 1]);
        let (challenge, _) = r.handle_register(&register(cseq, contact, extra), &src, now);
        assert_eq!(challenge.status_code.code(), 401);
        let request = authorized(register(cseq, contact, extra), &challenge, "pw2001");
        r.handle_register(&request, &src, now).0
    }

    #[test]
    fn registers_refreshes_and_expires() {
        let mut r = registrar(RegistrarConfig::default());
        let response = register_ok(
            &mut r,
            1,
            "<sip:2001@10.0.0.1:5062>;expires=120",
            "",
            NOW_MS,
        );
        assert_eq!(response.status_code.code(), 200);
        assert_eq!(r.contacts("2001", NOW_MS).len(), 1);
        // A second contact for the same user (desk phone and softphone).
        register_ok(
            &mut r,
            2,
            "<sip:2001@10.0.0.2:5062>",
            "Expires: 600\r\n",
            NOW_MS,
        );
        assert_eq!(r.contacts("2001", NOW_MS).len(), 2);
        // The 120 s binding is gone after 121 s; the sweep reports nothing while one remains.
        assert_eq!(r.contacts("2001", NOW_MS + 121_000).len(), 1);
        assert_eq!(
            r.sweep(NOW_MS + 121_000),
            [BindingChange {
                user: "2001".into(),
                contacts: vec!["sip:2001@10.0.0.2:5062".into()]
            }]
        );
        assert!(r.sweep(NOW_MS + 122_000).is_empty());
        assert_eq!(
            r.sweep(NOW_MS + 601_000),
            [BindingChange {
                user: "2001".into(),
                contacts: vec![]
            }]
        );
        assert_eq!(r.registered_users(), 0);
    }

    #[test]
    fn wildcard_unregisters_everything() {
        let mut r = registrar(RegistrarConfig::default());
        register_ok(&mut r, 1, "<sip:2001@10.0.0.1:5062>", "", NOW_MS);
        register_ok(&mut r, 2, "<sip:2001@10.0.0.2:5062>", "", NOW_MS);
        let response = register_ok(&mut r, 3, "*", "Expires: 0\r\n", NOW_MS);
        assert_eq!(response.status_code.code(), 200);
        assert!(r.contacts("2001", NOW_MS).is_empty());
    }

    #[test]
    fn too_brief_expiry_gets_423_with_min_expires() {
        let mut r = registrar(RegistrarConfig::default());
        let response = register_ok(&mut r, 1, "<sip:2001@10.0.0.1:5062>;expires=10", "", NOW_MS);
        assert_eq!(response.status_code.code(), 423);
        assert!(
            response
                .headers
                .iter()
                .any(|h| matches!(h, Header::MinExpires(m) if m.value() == "60"))
        );
        assert!(r.contacts("2001", NOW_MS).is_empty());
    }

    #[test]
    fn older_refresh_does_not_undo_a_newer_one() {
        let mut r = registrar(RegistrarConfig::default());
        register_ok(
            &mut r,
            5,
            "<sip:2001@10.0.0.1:5062>",
            "Expires: 600\r\n",
            NOW_MS,
        );
        // CSeq 4 arrives late and would unregister: ignored (RFC 3261 §10.3 step 7).
        register_ok(
            &mut r,
            4,
            "<sip:2001@10.0.0.1:5062>",
            "Expires: 0\r\n",
            NOW_MS,
        );
        assert_eq!(r.contacts("2001", NOW_MS).len(), 1);
    }

    #[test]
    fn expired_nonce_is_challenged_stale() {
        let config = RegistrarConfig {
            nonce_ttl_secs: 5,
            ..RegistrarConfig::default()
        };
        let mut r = registrar(config);
        let src = peer([10, 0, 0, 1]);
        let contact = "<sip:2001@10.0.0.1:5062>";
        let (challenge, _) = r.handle_register(&register(1, contact, ""), &src, NOW_MS);
        let late = authorized(register(1, contact, ""), &challenge, "pw2001");
        let (response, change) = r.handle_register(&late, &src, NOW_MS + 60_000);
        assert_eq!(response.status_code.code(), 401);
        assert!(change.is_none());
        assert!(
            response.headers.iter().any(
                |h| matches!(h, Header::WwwAuthenticate(w) if w.value().contains("stale=true"))
            )
        );
    }

    #[test]
    fn failures_from_one_source_are_throttled_and_others_are_not() {
        let config = RegistrarConfig {
            failure_limit: 3,
            ..RegistrarConfig::default()
        };
        let mut r = registrar(config);
        let attacker = peer([192, 0, 2, 9]);
        let contact = "<sip:2001@192.0.2.9:5062>";
        for _ in 0..3 {
            let (challenge, _) = r.handle_register(&register(1, contact, ""), &attacker, NOW_MS);
            let wrong = authorized(register(1, contact, ""), &challenge, "guess");
            let (response, change) = r.handle_register(&wrong, &attacker, NOW_MS);
            assert_eq!(response.status_code.code(), 403);
            assert!(change.is_none());
        }
        // Now refused without even a challenge, so guessing stops paying.
        let (response, _) = r.handle_register(&register(1, contact, ""), &attacker, NOW_MS);
        assert_eq!(response.status_code.code(), 403);
        // The real phone elsewhere still registers; the attacker is let in again after the window.
        assert_eq!(
            register_ok(&mut r, 2, "<sip:2001@10.0.0.1:5062>", "", NOW_MS)
                .status_code
                .code(),
            200
        );
        let later = NOW_MS + 61_000;
        r.sweep(later);
        let (response, _) = r.handle_register(&register(3, contact, ""), &attacker, later);
        assert_eq!(response.status_code.code(), 401);
        assert!(
            r.contacts("2001", NOW_MS)
                .iter()
                .all(|b| b.source.addr.ip() != attacker.addr.ip())
        );
    }

    #[test]
    fn contact_changes_are_reported_but_refreshes_are_not() {
        let mut r = registrar(RegistrarConfig::default());
        let src = peer([10, 0, 0, 1]);
        let mut cseq = 0;
        let mut send = |r: &mut Registrar, contact: &str, extra: &str| {
            cseq += 1;
            let (challenge, _) = r.handle_register(&register(cseq, contact, extra), &src, NOW_MS);
            let request = authorized(register(cseq, contact, extra), &challenge, "pw2001");
            r.handle_register(&request, &src, NOW_MS).1
        };
        let change = |contacts: &[&str]| {
            Some(BindingChange {
                user: "2001".into(),
                contacts: contacts.iter().map(|c| c.to_string()).collect(),
            })
        };
        let desk = "<sip:2001@10.0.0.1:5062>";
        let soft = "<sip:2001@10.0.0.1:5064>";
        assert_eq!(send(&mut r, desk, ""), change(&["sip:2001@10.0.0.1:5062"]));
        assert_eq!(send(&mut r, desk, ""), None, "a refresh");
        assert_eq!(
            send(&mut r, soft, "Expires: 600\r\n"),
            change(&["sip:2001@10.0.0.1:5062", "sip:2001@10.0.0.1:5064"])
        );
        assert_eq!(
            send(&mut r, soft, "Expires: 0\r\n"),
            change(&["sip:2001@10.0.0.1:5062"])
        );
        assert_eq!(send(&mut r, desk, "Expires: 0\r\n"), change(&[]));
    }
}
