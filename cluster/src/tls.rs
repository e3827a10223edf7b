//! Cluster PKI: a cluster CA, node certificates, join tokens, and the rustls configurations the
//! mesh runs on.
//!
//! Every node holds a certificate signed by the cluster CA whose only DNS subject alternative name
//! is `node-<id>.switchyard.cluster`. Both ends of every mesh connection present such a
//! certificate (mutual TLS), so a peer's node id is a verified fact, not a claim. Files:
//!
//! - CA directory: `ca.pem`, `ca.key` (mode 0600; keep it off the nodes if you can).
//! - Node directory: `ca.pem`, `node.pem`, `node.key` (mode 0600).
//!
//! All rustls configurations use the ring provider explicitly; nothing here depends on a
//! process-wide default provider.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::mesh::PROTOCOL_VERSION;

/// Suffix of every node's DNS name: node 7 is `node-7.switchyard.cluster`.
pub const NODE_NAME_SUFFIX: &str = ".switchyard.cluster";

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";

/// Marks a string as a join token of this format, so a wrong paste fails with a clear message.
const TOKEN_PREFIX: &str = "swjoin1.";

// Start validity an hour back so a node whose clock lags slightly still accepts fresh certs.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);
const NODE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);

/// Failures of the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `create_ca` found an existing CA key and refused to replace it.
    #[error("{path}: a cluster CA already exists there; refusing to overwrite it")]
    CaExists { path: PathBuf },
    /// A PEM file did not hold what it should.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected a certificate, key or configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate is not a valid node certificate of this cluster.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The join token's expiry has passed.
    #[error("join token expired at {expired_at} (unix seconds); issue a new one")]
    TokenExpired { expired_at: u64 },
    /// The string is not an intact join token.
    #[error("corrupt join token: {0}")]
    TokenCorrupt(String),
}

/// What a node needs to take part in the mesh: the cluster CA and its own certificate and key.
pub struct NodeIdentity {
    /// The cluster CA certificate: the only trust anchor.
    pub ca: CertificateDer<'static>,
    /// The node's certificate chain, leaf first (just the leaf: peers hold the CA).
    pub chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id().ok())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node id named by the leaf certificate.
    pub fn node_id(&self) -> Result<u64, TlsError> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| TlsError::Certificate("empty certificate chain".into()))?;
        node_id_from_cert(leaf)
    }
}

/// The DNS name that node `node_id`'s certificate carries and that peers dial it by.
pub fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}{NODE_NAME_SUFFIX}")
}

/// The node id in a `node-<id>.switchyard.cluster` name; `None` for anything else, including
/// non-canonical digits such as `node-07`, so one id has exactly one name.
pub fn node_id_from_dns_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_NAME_SUFFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// The node id a certificate was issued for. Callers must have verified the certificate against
/// the cluster CA first; this only reads it. A certificate naming zero or several nodes is refused.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<u64, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::Certificate(format!("unparseable certificate: {e}")))?;
    let mut ids = parsed.valid_dns_names().filter_map(node_id_from_dns_name);
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(TlsError::Certificate(format!(
            "certificate names no node (expected a DNS name node-<id>{NODE_NAME_SUFFIX})"
        ))),
        (Some(a), Some(b)) => Err(TlsError::Certificate(format!(
            "certificate names several nodes ({a}, {b}, ...)"
        ))),
    }
}

/// Creates a new cluster CA in `dir` (`ca.pem`, and `ca.key` with mode 0600). Refuses to replace
/// an existing CA: every node certificate of the cluster hangs off it.
pub fn create_ca(dir: &Path) -> Result<(), TlsError> {
    let key_path = dir.join(CA_KEY_FILE);
    if key_path.exists() {
        return Err(TlsError::CaExists { path: key_path });
    }
    fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A random tag per CA so that two clusters' CAs never share a subject: a certificate from the
    // wrong cluster then fails as "unknown issuer" rather than as a signature mismatch.
    dn.push(
        DnType::CommonName,
        format!("Switchyard cluster CA {:016x}", rand::random::<u64>()),
    );
    dn.push(DnType::OrganizationName, "Switchyard");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY)?;

    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(
        &dir.join(CA_CERT_FILE),
        to_pem("CERTIFICATE", cert.der()).as_bytes(),
        false,
    )?;
    write_file(
        &key_path,
        to_pem("PRIVATE KEY", &key.serialize_der()).as_bytes(),
        true,
    )
}

/// Issues a certificate for node `node_id` signed by the CA in `ca_dir`, and writes `ca.pem`,
/// `node.pem` and `node.key` (mode 0600) to `out_dir`. `node_name` is a human label that goes into
/// the certificate's common name next to the id; the identity is the id alone.
pub fn issue_node_cert(
    ca_dir: &Path,
    node_id: u64,
    node_name: &str,
    out_dir: &Path,
) -> Result<(), TlsError> {
    let ca = LoadedCa::load(ca_dir)?;
    let (cert, key) = ca.issue(node_id, node_name)?;
    write_node_files(out_dir, &ca.cert, &cert, &key)
}

/// Reads a node directory written by [`issue_node_cert`] or [`redeem_join_token`], checking that
/// the key belongs to the certificate and that the certificate is a node certificate of the CA.
pub fn load_node_identity(dir: &Path) -> Result<NodeIdentity, TlsError> {
    let ca = read_cert(&dir.join(CA_CERT_FILE))?;
    let cert = read_cert(&dir.join(NODE_CERT_FILE))?;
    let key_path = dir.join(NODE_KEY_FILE);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::BadFile {
        path: key_path.clone(),
        reason: format!("no usable private key: {e}"),
    })?;
    let node_id = node_id_from_cert(&cert)?;
    verify_node_cert(&ca, &cert, node_id)?;
    CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider()).map_err(|e| {
        TlsError::BadFile {
            path: key_path,
            reason: format!("key does not match {NODE_CERT_FILE}: {e}"),
        }
    })?;
    Ok(NodeIdentity {
        ca,
        chain: vec![cert],
        key,
    })
}

/// Issues a join token for node `node_id`: a single base64url string carrying the CA certificate,
/// a fresh certificate and private key for that node, and an expiry `ttl` from now.
///
/// **The token is a secret**: it contains the node's private key, so whoever holds it can join
/// the cluster as that node for as long as the certificate is valid. Send it over a trusted
/// channel and discard it once redeemed. The expiry only bounds how long [`redeem_join_token`]
/// accepts it; it does not shorten the certificate inside.
pub fn issue_join_token(ca_dir: &Path, node_id: u64, ttl: Duration) -> Result<String, TlsError> {
    let ca = LoadedCa::load(ca_dir)?;
    let (cert, key) = ca.issue(node_id, "")?;
    let token = JoinToken {
        node_id,
        expires_unix: unix_now().saturating_add(ttl.as_secs()),
        ca: ca.cert.to_vec(),
        cert: cert.to_vec(),
        key: key.secret_pkcs8_der().to_vec(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&token)
        .map_err(|e| TlsError::Certificate(format!("encoding join token: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
}

/// Checks a join token (format, expiry, certificate chain, key) and writes the node directory
/// `out_dir` (`ca.pem`, `node.pem`, `node.key`). Returns the node id the token was issued for.
/// Whitespace inside the token (line wraps from copy and paste) is ignored. The token also names
/// the CA the node will trust, so redeem only tokens from your own cluster's operator.
pub fn redeem_join_token(token: &str, out_dir: &Path) -> Result<u64, TlsError> {
    let compact: String = token.chars().filter(|c| !c.is_whitespace()).collect();
    let body = compact.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
        TlsError::TokenCorrupt(format!(
            "not a Switchyard join token (it should start with {TOKEN_PREFIX})"
        ))
    })?;
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| TlsError::TokenCorrupt(format!("bad base64url: {e}")))?;
    // rkyv needs its input aligned; a decoded Vec<u8> gives no such promise.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(raw.len());
    aligned.extend_from_slice(&raw);
    let token = rkyv::access::<ArchivedJoinToken, rkyv::rancor::Error>(&aligned)
        .map_err(|e| TlsError::TokenCorrupt(format!("malformed contents: {e}")))?;

    let expired_at = token.expires_unix.to_native();
    if unix_now() >= expired_at {
        return Err(TlsError::TokenExpired { expired_at });
    }
    let node_id = token.node_id.to_native();
    let ca = CertificateDer::from(token.ca.as_slice().to_vec());
    let cert = CertificateDer::from(token.cert.as_slice().to_vec());
    let key = PrivatePkcs8KeyDer::from(token.key.as_slice().to_vec());
    verify_node_cert(&ca, &cert, node_id)
        .map_err(|e| TlsError::TokenCorrupt(format!("certificate check failed: {e}")))?;
    CertifiedKey::from_der(
        vec![cert.clone()],
        PrivateKeyDer::Pkcs8(key.clone_key()),
        &provider(),
    )
    .map_err(|e| TlsError::TokenCorrupt(format!("key does not match the certificate: {e}")))?;
    write_node_files(out_dir, &ca, &cert, &key)?;
    Ok(node_id)
}

/// The server side of mesh TLS: presents the node certificate and requires a client certificate
/// chained to the cluster CA. ALPN `switchyard/<protocol version>`.
pub fn server_config(identity: &NodeIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(&identity.ca)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Certificate(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn()];
    Ok(config)
}

/// The client side of mesh TLS: presents the node certificate and trusts only the cluster CA.
/// Dial with the server name [`node_dns_name`]`(peer id)` so that reaching the wrong node fails.
pub fn client_config(identity: &NodeIdentity) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(&identity.ca)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn()];
    Ok(config)
}

/// ALPN carries the mesh protocol version, so a peer on another major version is refused during
/// the handshake already; the per-frame version check is the second line.
pub fn alpn() -> Vec<u8> {
    format!("switchyard/{PROTOCOL_VERSION}").into_bytes()
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct JoinToken {
    node_id: u64,
    expires_unix: u64,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

struct LoadedCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl LoadedCa {
    fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert = read_cert(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_der = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::BadFile {
            path: key_path.clone(),
            reason: format!("no usable private key: {e}"),
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| TlsError::BadFile {
            path: key_path,
            reason: format!("unusable CA key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self { cert, issuer })
    }

    fn issue(
        &self,
        node_id: u64,
        node_name: &str,
    ) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TlsError> {
        let mut params = CertificateParams::new(vec![node_dns_name(node_id)])?;
        let mut dn = DistinguishedName::new();
        let common_name = if node_name.is_empty() {
            format!("node-{node_id}")
        } else {
            format!("node-{node_id} ({node_name})")
        };
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Switchyard");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a server (it accepts) and a client (it dials).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
    }
}

/// Checks that `cert` chains to `ca`, is currently valid, and names node `node_id`.
fn verify_node_cert(
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'_>,
    node_id: u64,
) -> Result<(), TlsError> {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(root_store(ca)?, Arc::new(provider()))
            .build()
            .map_err(|e| TlsError::Certificate(format!("verifier: {e}")))?;
    let name = ServerName::try_from(node_dns_name(node_id))
        .map_err(|e| TlsError::Certificate(format!("node name: {e}")))?;
    verifier
        .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map_err(|e| {
            TlsError::Certificate(format!("not a valid certificate for node {node_id}: {e}"))
        })?;
    Ok(())
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn root_store(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), TlsError> {
    let now = OffsetDateTime::now_utc();
    let out_of_range = || TlsError::Certificate("validity period out of range".into());
    params.not_before = now
        .checked_sub(CLOCK_SKEW.try_into().map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    params.not_after = now
        .checked_add(validity.try_into().map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    Ok(())
}

fn write_node_files(
    dir: &Path,
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    key: &PrivatePkcs8KeyDer<'_>,
) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
    write_file(
        &dir.join(CA_CERT_FILE),
        to_pem("CERTIFICATE", ca).as_bytes(),
        false,
    )?;
    write_file(
        &dir.join(NODE_CERT_FILE),
        to_pem("CERTIFICATE", cert).as_bytes(),
        false,
    )?;
    write_file(
        &dir.join(NODE_KEY_FILE),
        to_pem("PRIVATE KEY", key.secret_pkcs8_der()).as_bytes(),
        true,
    )
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|e| TlsError::BadFile {
        path: path.to_owned(),
        reason: format!("no usable certificate: {e}"),
    })
}

/// Writes `contents` to `path`; secrets get mode 0600 before any byte lands in the file, also
/// when the file already existed with looser permissions.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| io_err(path, source))?;
    if secret {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|source| io_err(path, source))?;
    }
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err(path, source))
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting on byte boundaries is safe.
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn io_err(path: &Path, source: io::Error) -> TlsError {
    TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_reject_lookalikes() {
        assert_eq!(node_dns_name(42), "node-42.switchyard.cluster");
        assert_eq!(
            node_id_from_dns_name("node-42.switchyard.cluster"),
            Some(42)
        );
        for bad in [
            "node-042.switchyard.cluster",
            "node-+4.switchyard.cluster",
            "node-.switchyard.cluster",
            "node-4.switchyard.cluster.evil",
            "node-99999999999999999999.switchyard.cluster",
            "nod-4.switchyard.cluster",
        ] {
            assert_eq!(node_id_from_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn ca_node_cert_and_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        let node = dir.path().join("node");
        create_ca(&ca).expect("create ca");
        assert!(matches!(create_ca(&ca), Err(TlsError::CaExists { .. })));
        issue_node_cert(&ca, 7, "sw-east-1", &node).expect("issue");
        for key in [ca.join(CA_KEY_FILE), node.join(NODE_KEY_FILE)] {
            let mode = fs::metadata(&key).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let identity = load_node_identity(&node).expect("load");
        assert_eq!(identity.node_id().expect("id"), 7);
        server_config(&identity).expect("server config");
        client_config(&identity).expect("client config");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        create_ca(&ca).expect("create ca");
        issue_node_cert(&ca, 1, "", &a).expect("issue a");
        issue_node_cert(&ca, 2, "", &b).expect("issue b");
        fs::copy(b.join(NODE_KEY_FILE), a.join(NODE_KEY_FILE)).expect("copy");
        let err = load_node_identity(&a).expect_err("mismatched key");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn join_token_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        create_ca(&ca).expect("create ca");
        let token = issue_join_token(&ca, 9, Duration::from_secs(600)).expect("token");
        assert!(token.starts_with(TOKEN_PREFIX));
        // A line-wrapped paste still redeems.
        let wrapped: String = token
            .as_bytes()
            .chunks(70)
            .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
            .collect();
        let out = dir.path().join("joined");
        assert_eq!(redeem_join_token(&wrapped, &out).expect("redeem"), 9);
        let identity = load_node_identity(&out).expect("load");
        assert_eq!(identity.node_id().expect("id"), 9);
    }

    #[test]
    fn expired_and_corrupt_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        create_ca(&ca).expect("create ca");
        let out = dir.path().join("joined");

        let expired = issue_join_token(&ca, 3, Duration::ZERO).expect("token");
        assert!(matches!(
            redeem_join_token(&expired, &out),
            Err(TlsError::TokenExpired { .. })
        ));

        let token = issue_join_token(&ca, 3, Duration::from_secs(600)).expect("token");
        assert!(matches!(
            redeem_join_token("hello", &out),
            Err(TlsError::TokenCorrupt(_))
        ));
        assert!(matches!(
            redeem_join_token(&token[..token.len() / 2], &out),
            Err(TlsError::TokenCorrupt(_))
        ));
        // Flip characters all through the body: every variant must fail cleanly (or, if a flip
        // lands somewhere harmless, still redeem a verified certificate), never panic.
        let body_start = TOKEN_PREFIX.len();
        for i in (body_start..token.len()).step_by(7) {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let mutated = String::from_utf8(bytes).expect("ascii");
            if let Ok(id) = redeem_join_token(&mutated, &out) {
                assert_eq!(id, 3);
            }
        }
        assert!(!out.join(NODE_KEY_FILE).exists() || load_node_identity(&out).is_ok());
    }
}
