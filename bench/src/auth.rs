//! Client side of SIP digest authentication (RFC 7616 / RFC 8760, `qop=auth`), the counterpart
//! of `switchyard_sip::digest`, which only verifies.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::scenario::DigestPreference;

/// One `WWW-Authenticate: Digest ...` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: DigestPreference,
    pub qop_auth: bool,
    pub opaque: Option<String>,
}

impl Challenge {
    /// Parses a challenge; `None` for other schemes, algorithms we do not speak (the node may
    /// offer several; the caller picks among the rest) and challenges without realm or nonce.
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim_start();
        let (scheme, rest) = value.split_at(value.find(char::is_whitespace)?);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = DigestPreference::Md5;
        let mut qop_auth = false;
        for (name, val) in params(rest) {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(val),
                "nonce" => nonce = Some(val),
                "opaque" => opaque = Some(val),
                "algorithm" => {
                    algorithm = if val.eq_ignore_ascii_case("MD5") {
                        DigestPreference::Md5
                    } else if val.eq_ignore_ascii_case("SHA-256") {
                        DigestPreference::Sha256
                    } else {
                        return None;
                    }
                }
                "qop" => {
                    qop_auth = val
                        .split(',')
                        .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                }
                _ => {}
            }
        }
        Some(Challenge {
            realm: realm?,
            nonce: nonce?,
            algorithm,
            qop_auth,
            opaque,
        })
    }

    /// The `Authorization` value answering this challenge for `method` on `uri`.
    pub fn authorization(
        &self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let h = |parts: &[&str]| hex(self.algorithm, &parts.join(":"));
        let ha1 = h(&[user, &self.realm, password]);
        let ha2 = h(&[method, uri]);
        let alg = match self.algorithm {
            DigestPreference::Md5 => "MD5",
            DigestPreference::Sha256 => "SHA-256",
        };
        let mut value = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={alg}",
            self.realm, self.nonce
        );
        if self.qop_auth {
            let nc = format!("{nc:08x}");
            let response = h(&[&ha1, &self.nonce, &nc, cnonce, "auth", &ha2]);
            value.push_str(&format!(
                ", response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
            ));
        } else {
            let response = h(&[&ha1, &self.nonce, &ha2]);
            value.push_str(&format!(", response=\"{response}\""));
        }
        if let Some(o) = &self.opaque {
            value.push_str(&format!(", opaque=\"{o}\""));
        }
        value
    }
}

/// From several challenges, the one with the preferred algorithm, else the first usable.
pub fn choose<'a>(
    values: impl Iterator<Item = &'a str>,
    prefer: DigestPreference,
) -> Option<Challenge> {
    let all: Vec<Challenge> = values.filter_map(Challenge::parse).collect();
    all.iter()
        .find(|c| c.algorithm == prefer)
        .or_else(|| all.first())
        .cloned()
}

fn hex(alg: DigestPreference, text: &str) -> String {
    let bytes: Vec<u8> = match alg {
        DigestPreference::Md5 => Md5::digest(text.as_bytes()).to_vec(),
        DigestPreference::Sha256 => Sha256::digest(text.as_bytes()).to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `name=value` pairs of an auth-param list; values may be quoted (with `\` escapes).
fn params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(eq) = s.find('=') else {
            return out;
        };
        let name = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start();
        let value = if let Some(quoted) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            s = &quoted[end.min(quoted.len())..];
            v
        } else {
            let end = s.find(',').unwrap_or(s.len());
            let v = s[..end].trim().to_owned();
            s = &s[end..];
            v
        };
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use switchyard_sip::digest::{Algorithm, DigestVerifier};

    use super::*;

    #[test]
    fn the_node_verifier_accepts_our_answers() {
        let verifier = DigestVerifier::new("switchyard", b"secret".to_vec(), 300)
            .with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
        let challenges = verifier.challenge(1_000, false);
        for prefer in [DigestPreference::Md5, DigestPreference::Sha256] {
            let c = choose(challenges.iter().map(String::as_str), prefer).unwrap();
            assert_eq!(c.algorithm, prefer);
            let auth = c.authorization("2001", "pw2001", "REGISTER", "sip:127.0.0.1", 1, "abc");
            let user = verifier
                .verify(&auth, "REGISTER", 1_001, |u| {
                    (u == "2001").then(|| "pw2001".to_owned())
                })
                .unwrap();
            assert_eq!(user, "2001");
            let wrong = c.authorization("2001", "nope", "REGISTER", "sip:127.0.0.1", 1, "abc");
            assert!(
                verifier
                    .verify(&wrong, "REGISTER", 1_001, |_| Some("pw2001".into()))
                    .is_err()
            );
        }
    }

    #[test]
    fn parses_quoted_and_bare_params() {
        let c = Challenge::parse(
            "Digest realm=\"a \\\"b\\\"\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth,auth-int\", opaque=\"o\"",
        )
        .unwrap();
        assert_eq!(c.realm, "a \"b\"");
        assert_eq!(c.algorithm, DigestPreference::Sha256);
        assert!(c.qop_auth);
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert!(Challenge::parse("Basic realm=\"x\"").is_none());
        assert!(Challenge::parse("Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512").is_none());
        assert!(Challenge::parse("Digest realm=\"x\"").is_none());
        // Legacy RFC 2069 form: no qop.
        let legacy = Challenge::parse("Digest realm=\"x\", nonce=\"n\"").unwrap();
        assert!(!legacy.qop_auth);
        assert!(
            !legacy
                .authorization("u", "p", "REGISTER", "sip:h", 1, "c")
                .contains("qop")
        );
    }
}
