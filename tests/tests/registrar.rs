//! The registrar: Digest authentication, throttling, expiry rules, un-registration.

mod common;

use std::time::Duration;

use common::sip::{Request, SipMsg, UdpSip, authorization, md5_challenge, param, parse_challenge};
use common::{Node, NodeConfig};

const WAIT: Duration = Duration::from_secs(5);

struct Phone {
    ua: UdpSip,
    ext: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

impl Phone {
    fn new(node: &Node, ext: &str) -> Self {
        Self {
            ua: UdpSip::new(node.sip),
            ext: ext.to_owned(),
            call_id: common::sip::unique("reg-"),
            from_tag: common::sip::unique("rt"),
            cseq: 0,
        }
    }

    fn uri(&self) -> String {
        format!("sip:{}", self.ua.node)
    }

    /// One REGISTER (same Call-ID, next CSeq) with `expires` and optional Authorization.
    fn register(&mut self, expires: u32, auth: Option<String>) -> SipMsg {
        self.cseq += 1;
        let node = self.ua.node;
        let mut req = Request::new("REGISTER", &self.uri())
            .header(&format!("Contact: <sip:{}@127.0.0.1:5999>", self.ext))
            .header(&format!("Expires: {expires}"));
        req.from = format!("<sip:{}@{node}>;tag={}", self.ext, self.from_tag);
        req.to = format!("<sip:{}@{node}>", self.ext);
        req.call_id = self.call_id.clone();
        req.cseq = self.cseq;
        if let Some(a) = auth {
            req = req.header(&a);
        }
        self.ua
            .transact(&req, WAIT)
            .unwrap_or_else(|| panic!("no response to REGISTER (CSeq {})", self.cseq))
    }

    /// REGISTER, expect the 401 challenge, answer it with `password`; returns the final response.
    fn register_with(&mut self, password: &str, expires: u32) -> SipMsg {
        let challenge = self.register(expires, None);
        assert_eq!(
            challenge.status(),
            Some(401),
            "unauthenticated REGISTER must be challenged:\n{}",
            challenge.raw
        );
        self.answer(&challenge, password, expires)
    }

    fn answer(&mut self, challenge: &SipMsg, password: &str, expires: u32) -> SipMsg {
        let params = md5_challenge(challenge);
        let auth = authorization(&params, &self.ext, password, "REGISTER", &self.uri());
        self.register(expires, Some(auth))
    }
}

fn registrar_node(name: &str, extra: &[&str]) -> Node {
    Node::start(
        name,
        NodeConfig {
            agents: "2001-2005".into(),
            registrar_extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            ..NodeConfig::default()
        },
    )
}

/// The algorithms of the digest challenges a REGISTER without credentials gets, in order.
fn challenge_algorithms(node: &Node) -> Vec<String> {
    let mut phone = Phone::new(node, "2001");
    let resp = phone.register(3600, None);
    assert_eq!(resp.status(), Some(401), "{}", resp.raw);
    let challenges: Vec<Vec<(String, String)>> = resp
        .header_all("WWW-Authenticate")
        .iter()
        .filter_map(|v| parse_challenge(v))
        .collect();
    for c in &challenges {
        assert_eq!(param(c, "realm"), Some("switchyard"), "{}", resp.raw);
        assert!(
            param(c, "nonce").is_some_and(|n| !n.is_empty()),
            "{}",
            resp.raw
        );
    }
    challenges
        .iter()
        .map(|c| param(c, "algorithm").unwrap_or("MD5").to_ascii_uppercase())
        .collect()
}

#[test]
fn challenge_offers_md5_by_default_and_sha256_when_configured() {
    // Phones that give up on a second challenge (baresip 1.0) or know only MD5 (SIPp 3.6)
    // must register with the defaults.
    let node = registrar_node("challenge", &[]);
    assert_eq!(challenge_algorithms(&node), ["MD5"]);
    drop(node);
    let node = registrar_node(
        "challenge-sha256",
        &[r#"digest_algorithms = ["SHA-256", "MD5"]"#],
    );
    assert_eq!(challenge_algorithms(&node), ["SHA-256", "MD5"]);
}

#[test]
fn baresip_registers_with_the_default_settings() {
    let node = registrar_node("baresip", &[]);
    let dir = node.dir.path().join("baresip");
    std::fs::create_dir_all(&dir).expect("baresip dir");
    let port = common::free_port();
    std::fs::write(
        dir.join("config"),
        format!(
            "sip_listen 127.0.0.1:{port}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module_app account.so\n"
        ),
    )
    .expect("baresip config");
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:2001@{};transport=udp>;auth_pass=pw2001;regint=60\n",
            node.sip
        ),
    )
    .expect("baresip accounts");
    let mut baresip = std::process::Command::new("baresip")
        .arg("-f")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.log")).expect("log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("baresip is installed (scripts/test.sh installs baresip-core)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let registered = loop {
        let agent = node.get_json("/v1/agents/2001");
        if agent["registered"] == true {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = baresip.kill();
    let _ = baresip.wait();
    let log = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
    assert!(registered, "baresip did not register:\n{log}");
    assert_eq!(node.agent_state("2001"), "available");
}

#[test]
fn wrong_password_never_registers() {
    let node = registrar_node("wrong-password", &[]);
    let mut phone = Phone::new(&node, "2001");
    let resp = phone.register_with("not-the-password", 3600);
    let status = resp.status().unwrap();
    assert!(
        matches!(status, 401 | 403),
        "wrong password: 401 or 403 expected, got:\n{}",
        resp.raw
    );
    std::thread::sleep(Duration::from_millis(300));
    let state = node.agent_state("2001");
    assert_eq!(
        state, "loggedout",
        "agent with a wrong password must stay logged out"
    );

    // Control: the right password registers, and the agent becomes available.
    let mut phone = Phone::new(&node, "2001");
    let resp = phone.register_with("pw2001", 3600);
    assert_eq!(resp.status(), Some(200), "right password:\n{}", resp.raw);
    assert!(
        resp.header_all("Contact")
            .iter()
            .any(|c| c.contains("sip:2001@127.0.0.1:5999")),
        "200 to REGISTER lists the binding:\n{}",
        resp.raw
    );
    node.wait_agent_state("2001", "available", Duration::from_secs(5));
    // An unknown user is never registered either.
    let mut stranger = Phone::new(&node, "9999");
    let resp = stranger.register(3600, None);
    let resp = if resp.status() == Some(401) {
        stranger.answer(&resp, "pw9999", 3600)
    } else {
        resp
    };
    assert!(
        !resp.status().is_some_and(|s| (200..300).contains(&s)),
        "an unknown extension registered:\n{}",
        resp.raw
    );
}

#[test]
fn repeated_failures_are_throttled() {
    let node = registrar_node(
        "throttle",
        &["failure_limit = 3", "failure_window_secs = 60"],
    );
    let mut phone = Phone::new(&node, "2001");
    let mut statuses = Vec::new();
    let mut last_challenge = None;
    for _ in 0..3 {
        let challenge = phone.register(3600, None);
        statuses.push(challenge.status().unwrap());
        if challenge.status() != Some(401) {
            break;
        }
        let resp = phone.answer(&challenge, "wrong", 3600);
        statuses.push(resp.status().unwrap());
        last_challenge = Some(challenge);
    }
    eprintln!("[registrar] statuses during 3 failures: {statuses:?}");
    assert_eq!(
        statuses.first(),
        Some(&401),
        "first REGISTER is challenged: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| !(200..300).contains(s)),
        "a wrong password never succeeds: {statuses:?}"
    );

    // Past the limit: refused outright, without a challenge.
    let resp = phone.register(3600, None);
    let status = resp.status().unwrap();
    eprintln!("[registrar] after the failure limit: {status}");
    assert!(
        !(200..300).contains(&status) && status != 401 && status >= 400,
        "after failure_limit = 3 failures, a REGISTER must be refused without a challenge, got:\n{}",
        resp.raw
    );
    assert!(
        resp.header("WWW-Authenticate").is_none(),
        "no challenge while throttled:\n{}",
        resp.raw
    );
    // Even the right password is refused from this source until the window passes.
    if let Some(challenge) = last_challenge {
        let resp = phone.answer(&challenge, "pw2001", 3600);
        assert!(
            !resp.status().is_some_and(|s| (200..300).contains(&s)),
            "throttled source registered anyway:\n{}",
            resp.raw
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.agent_state("2001"), "loggedout");
}

#[test]
fn unregister_with_expires_zero() {
    let node = registrar_node("unregister", &[]);
    let mut phone = Phone::new(&node, "2001");
    let resp = phone.register_with("pw2001", 3600);
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
    node.wait_agent_state("2001", "available", Duration::from_secs(5));

    // Same Call-ID, higher CSeq, Expires: 0.
    let resp = phone.register(0, None);
    let resp = if resp.status() == Some(401) {
        phone.answer(&resp, "pw2001", 0)
    } else {
        resp
    };
    assert_eq!(resp.status(), Some(200), "un-REGISTER:\n{}", resp.raw);
    for contact in resp.header_all("Contact") {
        assert!(
            !contact.contains("sip:2001@127.0.0.1:5999") || contact.contains("expires=0"),
            "the removed binding must not be listed as live:\n{}",
            resp.raw
        );
    }
    // Its only binding gone, the agent is logged out.
    node.wait_agent_state("2001", "loggedout", Duration::from_secs(5));
}

#[test]
fn expires_below_minimum_gets_423() {
    let node = registrar_node("min-expires", &[]);
    let mut phone = Phone::new(&node, "2001");
    let resp = phone.register(30, None);
    let resp = if resp.status() == Some(401) {
        phone.answer(&resp, "pw2001", 30)
    } else {
        resp
    };
    assert_eq!(
        resp.status(),
        Some(423),
        "Expires: 30 < min_expires 60:\n{}",
        resp.raw
    );
    assert_eq!(
        resp.header("Min-Expires").map(str::trim),
        Some("60"),
        "423 carries Min-Expires:\n{}",
        resp.raw
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.agent_state("2001"), "loggedout");
}

#[test]
fn stale_nonce_gets_401_stale_true() {
    let node = registrar_node("stale-nonce", &["nonce_ttl_secs = 1"]);
    let mut phone = Phone::new(&node, "2001");
    let challenge = phone.register(3600, None);
    assert_eq!(challenge.status(), Some(401), "{}", challenge.raw);
    std::thread::sleep(Duration::from_millis(2500));
    // Right password, expired nonce.
    let resp = phone.answer(&challenge, "pw2001", 3600);
    assert_eq!(
        resp.status(),
        Some(401),
        "expired nonce must be re-challenged:\n{}",
        resp.raw
    );
    let stale = resp
        .header_all("WWW-Authenticate")
        .iter()
        .filter_map(|v| parse_challenge(v))
        .any(|c| param(&c, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")));
    assert!(stale, "the new challenge says stale=true:\n{}", resp.raw);
    let old_nonce = param(&md5_challenge(&challenge), "nonce")
        .unwrap()
        .to_owned();
    let new_nonce = param(&md5_challenge(&resp), "nonce").unwrap().to_owned();
    assert_ne!(old_nonce, new_nonce, "a fresh nonce comes with stale=true");

    // Control: answering the fresh challenge at once works.
    let ok = phone.answer(&resp, "pw2001", 3600);
    assert_eq!(ok.status(), Some(200), "fresh nonce:\n{}", ok.raw);
}
