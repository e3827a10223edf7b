//! Helpers for `switchyard ctl`: a minimal HTTP/1.1 client for the node's API and the
//! human-readable status table.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::cluster::StatusJson;

/// Sends one request and returns the status code and body. The API always answers with a
/// Content-Length, so reading to the end of a `Connection: close` response is enough.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP status line"))?;
    Ok((status, body.to_owned()))
}

/// The cluster status as a table an operator reads at a glance.
pub fn render_status(s: &StatusJson) -> String {
    let mut out = String::new();
    let leader = s.leader.map_or_else(
        || "none (election in progress)".to_owned(),
        |l| l.to_string(),
    );
    let _ = writeln!(
        out,
        "node {} ({}), leader {leader}, term {}, commit {}, applied {}, lease {}",
        s.node_id,
        s.role,
        s.term,
        s.commit_index,
        s.applied_index,
        if s.lease_valid { "valid" } else { "LOST" }
    );
    let _ = writeln!(
        out,
        "config revision {}, placement epoch {}",
        s.config_revision, s.placement_epoch
    );
    let _ = writeln!(
        out,
        "\n{:>4}  {:<10} {:<8} {:<9} {:<5} {:<9} {:>7} {:>6} {:>6} {:>7}",
        "ID", "NAME", "SITE", "STATUS", "VOTER", "HEALTH", "LAG", "RTT", "QUEUES", "AGENTS"
    );
    for m in &s.members {
        let health = m.health.to_uppercase();
        let lag = m.replication_lag.map_or("-".to_owned(), |l| l.to_string());
        let rtt = m.rtt_ms.map_or("-".to_owned(), |r| format!("{r:.1}ms"));
        let _ = writeln!(
            out,
            "{:>4}  {:<10} {:<8} {:<9} {:<5} {:<9} {:>7} {:>6} {:>6} {:>7}",
            m.id,
            m.name,
            m.site,
            format!("{:?}", m.status).to_lowercase(),
            if m.voter { "yes" } else { "no" },
            health.as_str(),
            lag,
            rtt,
            m.queues,
            m.agents
        );
    }
    let sites: Vec<String> = s
        .sites
        .iter()
        .map(|(site, ids)| format!("{site}: {ids:?}"))
        .collect();
    let _ = writeln!(out, "\nsites: {}", sites.join(", "));
    out
}
