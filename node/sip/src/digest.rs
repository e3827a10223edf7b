//! Server side of HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760): MD5 and
//! SHA-256, `qop=auth`, and the legacy RFC 2069 form without qop that old phones still send.
//!
//! Nonces are stateless: the issue time followed by an HMAC of it under a cluster-wide secret,
//! so any node can tell a forged nonce from an expired one without storing anything. The price
//! is that a captured response can be replayed until its nonce expires (there is no nonce-count
//! tracking); keep the TTL short.

use hmac::{Hmac, Mac, NewMac};
use md5::Md5;
use sha2::{Digest, Sha256};

/// Hex digits of the issue time at the start of a nonce.
const NONCE_TIME_LEN: usize = 16;
/// Bytes of HMAC kept in a nonce; 128 bits is plenty against forgery.
const NONCE_MAC_BYTES: usize = 16;
/// Whitespace between auth-params; line breaks too, for values that were not unfolded.
const LWS: [char; 4] = [' ', '\t', '\r', '\n'];

/// Digest hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The algorithm named by an `algorithm` parameter value (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Md5, Self::Sha256]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The `algorithm` parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Lower-case hex digest of the parts joined by `:`.
    fn hex(self, parts: &[&str]) -> String {
        fn feed<D: Digest>(mut hasher: D, parts: &[&str]) -> String {
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    hasher.update(b":");
                }
                hasher.update(part.as_bytes());
            }
            to_hex(&hasher.finalize())
        }
        match self {
            Self::Md5 => feed(Md5::new(), parts),
            Self::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

/// Why credentials were refused. Every case is answered with a fresh challenge (401/407);
/// only [`AuthError::Stale`] sets `stale=true` in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a Digest scheme: treat the request as carrying no credentials (RFC 4475 regaut01).
    #[error("not Digest credentials")]
    NotDigest,
    /// A required parameter is missing, duplicated or malformed, or qop is not `auth`.
    #[error("malformed Digest credentials")]
    Malformed,
    /// An algorithm other than MD5 or SHA-256.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The realm is not ours.
    #[error("realm mismatch")]
    RealmMismatch,
    /// The nonce was not issued with our secret.
    #[error("nonce not issued here")]
    InvalidNonce,
    /// `password_for` knows no such user.
    #[error("unknown user")]
    UnknownUser,
    /// The response does not match the password.
    #[error("wrong credentials")]
    WrongCredentials,
    /// Correct credentials on an expired nonce: challenge again with `stale=true`.
    #[error("stale nonce")]
    Stale,
}

/// The parameters of a Digest `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `(nc, cnonce)` when `qop=auth`; `None` for RFC 2069 responses.
    pub qop_auth: Option<(String, String)>,
}

impl Credentials {
    /// Parses a header value such as `Digest username="bob", realm="x", ...`.
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        let value = value.trim_start();
        let scheme_end = value.find(LWS).unwrap_or(value.len());
        if !value[..scheme_end].eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let mut params = AuthParams {
            rest: &value[scheme_end..],
        };
        let mut fields: [Option<String>; 9] = Default::default();
        while let Some((name, param_value)) = params.next_param()? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => 0,
                "realm" => 1,
                "nonce" => 2,
                "uri" => 3,
                "response" => 4,
                "algorithm" => 5,
                "qop" => 6,
                "nc" => 7,
                "cnonce" => 8,
                _ => continue,
            };
            if fields[slot].replace(param_value).is_some() {
                return Err(AuthError::Malformed);
            }
        }
        let [
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            qop,
            nc,
            cnonce,
        ] = fields;
        let algorithm = match algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(name) => Algorithm::from_name(name).ok_or(AuthError::UnsupportedAlgorithm)?,
        };
        let qop_auth = match (qop, nc, cnonce) {
            (None, _, _) => None,
            (Some(qop), Some(nc), Some(cnonce))
                if qop.eq_ignore_ascii_case("auth")
                    && nc.len() == 8
                    && nc.bytes().all(|b| b.is_ascii_hexdigit())
                    && !cnonce.is_empty() =>
            {
                Some((nc, cnonce))
            }
            _ => return Err(AuthError::Malformed),
        };
        match (username, realm, nonce, uri, response) {
            (Some(username), Some(realm), Some(nonce), Some(uri), Some(response))
                if !username.is_empty() && !response.is_empty() =>
            {
                Ok(Self {
                    username,
                    realm,
                    nonce,
                    uri,
                    response,
                    algorithm,
                    qop_auth,
                })
            }
            _ => Err(AuthError::Malformed),
        }
    }

    /// The response a client knowing `password` computes for these parameters.
    fn expected_response(&self, method: &str, password: &str) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hex(&[&self.username, &self.realm, password]);
        let ha2 = alg.hex(&[method, &self.uri]);
        match &self.qop_auth {
            Some((nc, cnonce)) => alg.hex(&[&ha1, &self.nonce, nc, cnonce, "auth", &ha2]),
            None => alg.hex(&[&ha1, &self.nonce, &ha2]),
        }
    }
}

/// Issues challenges and checks credentials for one realm.
#[derive(Clone)]
pub struct DigestVerifier {
    realm: String,
    secret: Vec<u8>,
    nonce_ttl: u64,
    /// Algorithms challenged with, in order.
    offered: Vec<Algorithm>,
}

impl std::fmt::Debug for DigestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("DigestVerifier")
            .field("realm", &self.realm)
            .field("nonce_ttl", &self.nonce_ttl)
            .finish_non_exhaustive()
    }
}

impl DigestVerifier {
    /// `secret` must be shared by every node that may see the answer to a challenge;
    /// nonces older than `nonce_ttl_secs` are stale.
    pub fn new(realm: impl Into<String>, secret: impl Into<Vec<u8>>, nonce_ttl_secs: u64) -> Self {
        Self {
            realm: realm.into(),
            secret: secret.into(),
            nonce_ttl: nonce_ttl_secs,
            offered: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// Offers `algorithms`, in this order, instead of SHA-256 then MD5. Many deployed clients
    /// (SIPp among them) read only the first challenge and know only MD5, so a fleet of such
    /// phones needs MD5 first; an empty list keeps the default.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        if !algorithms.is_empty() {
            self.offered = algorithms.to_vec();
        }
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// `WWW-Authenticate` / `Proxy-Authenticate` values, one per offered algorithm, by default
    /// SHA-256 first as RFC 8760 recommends (clients pick the first they support).
    pub fn challenge(&self, now_unix_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_unix_secs);
        let stale = if stale { ", stale=true" } else { "" };
        self.offered
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                    self.realm,
                    alg.name()
                )
            })
            .collect()
    }

    /// Checks an `Authorization` value for a request with `method`, returning the username.
    /// `password_for` is only asked once the realm and nonce are known to be ours.
    pub fn verify(
        &self,
        authorization: &str,
        method: &str,
        now_unix_secs: u64,
        password_for: impl FnOnce(&str) -> Option<String>,
    ) -> Result<String, AuthError> {
        let creds = Credentials::parse(authorization)?;
        if creds.realm != self.realm {
            return Err(AuthError::RealmMismatch);
        }
        let issued = self
            .nonce_time(&creds.nonce)
            .ok_or(AuthError::InvalidNonce)?;
        let password = password_for(&creds.username).ok_or(AuthError::UnknownUser)?;
        let expected = creds.expected_response(method, &password);
        if !constant_time_eq_hex(&expected, &creds.response) {
            return Err(AuthError::WrongCredentials);
        }
        // Stale only after the response checked out, so `stale=true` tells the client that
        // just retrying with a fresh nonce will work (RFC 7616 §3.3).
        if now_unix_secs.saturating_sub(issued) > self.nonce_ttl {
            return Err(AuthError::Stale);
        }
        Ok(creds.username)
    }

    fn nonce(&self, now_unix_secs: u64) -> String {
        let mut nonce = format!("{now_unix_secs:016x}");
        nonce.push_str(&to_hex(&self.nonce_mac(now_unix_secs)[..NONCE_MAC_BYTES]));
        nonce
    }

    /// The issue time of a nonce we signed.
    fn nonce_time(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != NONCE_TIME_LEN + 2 * NONCE_MAC_BYTES {
            return None;
        }
        let issued = u64::from_str_radix(nonce.get(..NONCE_TIME_LEN)?, 16).ok()?;
        let expected = to_hex(&self.nonce_mac(issued)[..NONCE_MAC_BYTES]);
        constant_time_eq_hex(&expected, nonce.get(NONCE_TIME_LEN..)?).then_some(issued)
    }

    fn nonce_mac(&self, issued: u64) -> Vec<u8> {
        // HMAC takes keys of any length, so this cannot fail; an empty MAC would simply never
        // verify.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return Vec::new();
        };
        mac.update(&issued.to_be_bytes());
        mac.update(self.realm.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// Compares lower-case hex `expected` with `given` (either case) without an early exit, so
/// timing does not reveal how many leading digits of a guess were right.
fn constant_time_eq_hex(expected: &str, given: &str) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .bytes()
        .zip(given.bytes())
        .fold(0u8, |diff, (e, g)| diff | (e ^ g.to_ascii_lowercase()))
        == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `name=value` pairs of an auth-param list (RFC 7235 §2.1), values unquoted.
struct AuthParams<'a> {
    rest: &'a str,
}

impl<'a> AuthParams<'a> {
    fn next_param(&mut self) -> Result<Option<(&'a str, String)>, AuthError> {
        let rest = self
            .rest
            .trim_start_matches(|c| c == ',' || LWS.contains(&c));
        if rest.is_empty() {
            return Ok(None);
        }
        let (name, after) = rest.split_once('=').ok_or(AuthError::Malformed)?;
        let name = name.trim_end();
        if name.is_empty() || name.contains(|c| c == ',' || c == '"' || LWS.contains(&c)) {
            return Err(AuthError::Malformed);
        }
        let after = after.trim_start();
        let (value, rest) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => value.push(chars.next().ok_or(AuthError::Malformed)?.1),
                    Some((_, c)) => value.push(c),
                    None => return Err(AuthError::Malformed),
                }
            };
            (value, &quoted[end + 1..])
        } else {
            let end = after
                .find(|c| c == ',' || LWS.contains(&c))
                .unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        let rest = rest.trim_start_matches(LWS);
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err(AuthError::Malformed);
        }
        self.rest = rest;
        Ok(Some((name, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn verifier() -> DigestVerifier {
        DigestVerifier::new("switchyard.example.com", b"cluster secret".to_vec(), 300)
    }

    fn nonce_of(challenge: &str) -> &str {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        let end = start + challenge[start..].find('"').unwrap();
        &challenge[start..end]
    }

    /// What a phone computes, written independently of `Credentials::expected_response`.
    fn phone_authorization(
        alg: Algorithm,
        nonce: &str,
        user: &str,
        password: &str,
        method: &str,
    ) -> String {
        let h = |s: String| match alg {
            Algorithm::Md5 => format!("{:x}", Md5::digest(s.as_bytes())),
            Algorithm::Sha256 => format!("{:x}", Sha256::digest(s.as_bytes())),
        };
        let realm = "switchyard.example.com";
        let uri = "sip:switchyard.example.com";
        let ha1 = h(format!("{user}:{realm}:{password}"));
        let ha2 = h(format!("{method}:{uri}"));
        let response = h(format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"{uri}\",\
             response=\"{response}\",algorithm={},cnonce=\"0a4f113b\",qop=auth,nc=00000001",
            alg.name()
        )
    }

    fn alice(user: &str) -> Option<String> {
        (user == "alice").then(|| "s3cret".to_owned())
    }

    #[test]
    fn rfc2617_md5_example() {
        let header = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let creds = Credentials::parse(header).unwrap();
        assert_eq!(creds.username, "Mufasa");
        assert_eq!(creds.algorithm, Algorithm::Md5);
        assert_eq!(
            creds.expected_response("GET", "Circle Of Life"),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn rfc7616_sha256_and_md5_examples() {
        let mut creds = Credentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            response: String::new(),
            algorithm: Algorithm::Sha256,
            qop_auth: Some((
                "00000001".into(),
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
            )),
        };
        assert_eq!(
            creds.expected_response("GET", "Circle of Life"),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        creds.algorithm = Algorithm::Md5;
        assert_eq!(
            creds.expected_response("GET", "Circle of Life"),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn challenges_offer_sha256_then_md5() {
        let challenges = verifier().challenge(NOW, false);
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].starts_with("Digest realm=\"switchyard.example.com\", nonce=\""));
        assert!(challenges[0].ends_with("algorithm=SHA-256, qop=\"auth\""));
        assert!(challenges[1].ends_with("algorithm=MD5, qop=\"auth\""));
        assert!(verifier().challenge(NOW, true)[0].ends_with(", stale=true"));
    }

    #[test]
    fn phone_round_trip_for_both_algorithms() {
        let v = verifier();
        for (i, alg) in [Algorithm::Sha256, Algorithm::Md5].into_iter().enumerate() {
            let challenge = &v.challenge(NOW, false)[i];
            let auth = phone_authorization(alg, nonce_of(challenge), "alice", "s3cret", "REGISTER");
            assert_eq!(
                v.verify(&auth, "REGISTER", NOW + 10, alice),
                Ok("alice".into())
            );
            assert_eq!(
                v.verify(&auth, "INVITE", NOW + 10, alice),
                Err(AuthError::WrongCredentials)
            );
            let auth = phone_authorization(alg, nonce_of(challenge), "alice", "guess", "REGISTER");
            assert_eq!(
                v.verify(&auth, "REGISTER", NOW, alice),
                Err(AuthError::WrongCredentials)
            );
        }
    }

    #[test]
    fn legacy_rfc2069_response_without_qop() {
        let v = verifier();
        let nonce = v.nonce(NOW);
        let ha1 = format!("{:x}", Md5::digest(b"alice:switchyard.example.com:s3cret"));
        let ha2 = format!(
            "{:x}",
            Md5::digest(b"INVITE:sip:bob@switchyard.example.com")
        );
        let response = format!(
            "{:x}",
            Md5::digest(format!("{ha1}:{nonce}:{ha2}").as_bytes())
        );
        let auth = format!(
            "digest username=\"alice\", realm=\"switchyard.example.com\", nonce=\"{nonce}\", \
             uri=\"sip:bob@switchyard.example.com\", response=\"{}\"",
            response.to_uppercase()
        );
        assert_eq!(v.verify(&auth, "INVITE", NOW, alice), Ok("alice".into()));
    }

    #[test]
    fn expired_nonce_is_stale_only_with_the_right_password() {
        let v = verifier();
        let nonce = v.nonce(NOW);
        let good = phone_authorization(Algorithm::Md5, &nonce, "alice", "s3cret", "REGISTER");
        let bad = phone_authorization(Algorithm::Md5, &nonce, "alice", "nope", "REGISTER");
        assert_eq!(
            v.verify(&good, "REGISTER", NOW + 300, alice),
            Ok("alice".into())
        );
        assert_eq!(
            v.verify(&good, "REGISTER", NOW + 301, alice),
            Err(AuthError::Stale)
        );
        assert_eq!(
            v.verify(&bad, "REGISTER", NOW + 301, alice),
            Err(AuthError::WrongCredentials)
        );
    }

    #[test]
    fn forged_or_foreign_nonces_and_realms_are_refused_before_lookup() {
        let v = verifier();
        let other = DigestVerifier::new("switchyard.example.com", b"other".to_vec(), 300);
        let no_lookup = |_: &str| -> Option<String> { panic!("password looked up") };
        for nonce in [
            other.nonce(NOW),
            "00".into(),
            format!("{}0", &v.nonce(NOW)[1..]),
        ] {
            let auth = phone_authorization(Algorithm::Md5, &nonce, "alice", "s3cret", "BYE");
            assert_eq!(
                v.verify(&auth, "BYE", NOW, no_lookup),
                Err(AuthError::InvalidNonce)
            );
        }
        let auth = phone_authorization(Algorithm::Md5, &v.nonce(NOW), "alice", "s3cret", "BYE")
            .replace("switchyard.example.com\",nonce", "elsewhere\",nonce");
        assert_eq!(
            v.verify(&auth, "BYE", NOW, no_lookup),
            Err(AuthError::RealmMismatch)
        );
        let auth = phone_authorization(Algorithm::Md5, &v.nonce(NOW), "mallory", "x", "BYE");
        assert_eq!(
            v.verify(&auth, "BYE", NOW, alice),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn malformed_and_foreign_schemes() {
        let v = verifier();
        let cases = [
            (
                "NoOneKnowsThisScheme opaque-data=here",
                AuthError::NotDigest,
            ),
            ("Basic YWxpY2U6czNjcmV0", AuthError::NotDigest),
            ("Digest", AuthError::Malformed),
            ("Digest username=\"alice\"", AuthError::Malformed),
            ("Digest username=\"alice, realm=x", AuthError::Malformed),
            ("Digest username alice", AuthError::Malformed),
            (
                "Digest username=a, username=b, realm=r, nonce=n, uri=u, response=r",
                AuthError::Malformed,
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth-int, nc=00000001, cnonce=c",
                AuthError::Malformed,
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth, nc=1, cnonce=c",
                AuthError::Malformed,
            ),
            (
                "Digest username=a, realm=r, nonce=n, uri=u, response=r, algorithm=MD5-sess",
                AuthError::UnsupportedAlgorithm,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                v.verify(header, "REGISTER", NOW, alice),
                Err(expected),
                "{header}"
            );
        }
    }

    #[test]
    fn quoted_values_are_unescaped() {
        let creds = Credentials::parse(
            r#"Digest username="al\"ice", realm="r", nonce="n", uri="sip:a@b", response="00""#,
        )
        .unwrap();
        assert_eq!(creds.username, "al\"ice");
        assert_eq!(creds.qop_auth, None);
    }

    #[test]
    fn algorithm_names_and_offered_order() {
        assert_eq!(Algorithm::from_name("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("MD5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_name("MD5-sess"), None);
        let md5_first = verifier().with_algorithms(&[Algorithm::Md5]);
        let challenges = md5_first.challenge(NOW, false);
        assert_eq!(challenges.len(), 1);
        assert!(challenges[0].contains("algorithm=MD5,"));
        let unchanged = verifier().with_algorithms(&[]).challenge(NOW, false);
        assert_eq!(unchanged, verifier().challenge(NOW, false));
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", verifier()).contains("cluster secret"));
    }
}
