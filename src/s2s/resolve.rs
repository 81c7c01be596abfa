//! Where a remote domain's server listens (RFC 6120 §3.2, XEP-0368):
//! 1. a static route from `[s2s] routes`;
//! 2. DNS SRV records `_xmpps-server._tcp` (direct TLS) and
//!    `_xmpp-server._tcp` (STARTTLS), merged by priority with direct TLS
//!    first on equal priority, weighted within that (RFC 2782);
//! 3. without SRV records, the domain's own addresses on port 5269.
//!
//! SRV queries go straight to the nameservers of /etc/resolv.conf (or
//! `[s2s] nameservers`) over UDP, retried over TCP when truncated; host
//! names are then resolved through the system resolver (so /etc/hosts
//! applies).

use crate::config::S2sConfig;
use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// XEP-0368: TLS from the first byte instead of STARTTLS.
    pub direct_tls: bool,
}

/// An SRV record of either service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub host: String,
    pub direct_tls: bool,
}

const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// SRV records tried per domain at most.
const MAX_RECORDS: usize = 16;

pub async fn targets(cfg: &S2sConfig, domain: &str) -> Vec<Target> {
    if let Some(route) = cfg.routes.get(domain) {
        return lookup(route, false).await;
    }
    if !wants_srv(domain) {
        return lookup(&format!("{domain}:5269"), false).await;
    }
    let servers = nameservers(cfg);
    let (tls_name, plain_name) = (
        format!("_xmpps-server._tcp.{domain}"),
        format!("_xmpp-server._tcp.{domain}"),
    );
    let (tls, plain) = tokio::join!(
        srv(&servers, &tls_name, true),
        srv(&servers, &plain_name, false),
    );
    let records: Vec<Srv> = tls.into_iter().chain(plain).flatten().collect();
    if records.is_empty() {
        return lookup(&format!("{domain}:5269"), false).await;
    }
    let mut out = Vec::new();
    // A domain's DNS may be anyone's: a bounded number of targets.
    for r in order(records).into_iter().take(MAX_RECORDS) {
        // RFC 2782: a lone "." target means the service is not offered.
        if r.host.is_empty() {
            continue;
        }
        out.extend(lookup(&format!("{}:{}", r.host, r.port), r.direct_tls).await);
    }
    out
}

/// RFC 6761: localhost and .invalid names are never asked of DNS; an
/// address literal has no SRV records.
fn wants_srv(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    !(d == "localhost"
        || d.ends_with(".localhost")
        || d == "invalid"
        || d.ends_with(".invalid")
        || d.parse::<std::net::IpAddr>().is_ok()
        || d.starts_with('['))
}

async fn lookup(host_port: &str, direct_tls: bool) -> Vec<Target> {
    match tokio::net::lookup_host(host_port).await {
        Ok(a) => a.map(|addr| Target { addr, direct_tls }).collect(),
        Err(e) => {
            tracing::info!(host_port, error = %e, "s2s: cannot resolve");
            Vec::new()
        }
    }
}

/// Sort by priority, direct TLS ahead of STARTTLS on equal priority
/// (XEP-0368); weighted random order within each group (RFC 2782).
pub fn order(mut records: Vec<Srv>) -> Vec<Srv> {
    records.sort_by_key(|r| (r.priority, !r.direct_tls));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let key = (records[0].priority, records[0].direct_tls);
        let n = records
            .iter()
            .take_while(|r| (r.priority, r.direct_tls) == key)
            .count();
        let mut group: Vec<Srv> = records.drain(..n).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| r.weight as u32).sum();
            let pick = if total == 0 {
                0
            } else {
                let mut roll = random_below(total + 1);
                group
                    .iter()
                    .position(|r| {
                        if roll <= r.weight as u32 {
                            true
                        } else {
                            roll -= r.weight as u32;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(pick));
        }
    }
    out
}

fn random_below(n: u32) -> u32 {
    let b = crate::random::bytes(4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % n.max(1)
}

fn nameservers(cfg: &S2sConfig) -> Vec<SocketAddr> {
    if !cfg.nameservers.is_empty() {
        return cfg
            .nameservers
            .iter()
            .filter_map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .ok()
            })
            .collect();
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found: Vec<SocketAddr> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| (ip, 53).into())
        .collect();
    if found.is_empty() {
        vec![([127, 0, 0, 1], 53).into()]
    } else {
        found
    }
}

/// The SRV records for `name`, from the first nameserver that answers;
/// `None` when none did (then the A/AAAA fallback applies).
async fn srv(servers: &[SocketAddr], name: &str, direct_tls: bool) -> Option<Vec<Srv>> {
    for ns in servers {
        match tokio::time::timeout(DNS_TIMEOUT, query(*ns, name)).await {
            Ok(Ok(reply)) if servfail(&reply) => {
                tracing::debug!(%ns, name, "s2s: SRV query answered SERVFAIL");
            }
            Ok(Ok(reply)) => return Some(parse_srv(&reply, direct_tls)),
            Ok(Err(e)) => tracing::debug!(%ns, name, error = %e, "s2s: SRV query failed"),
            Err(_) => tracing::debug!(%ns, name, "s2s: SRV query timed out"),
        }
    }
    None
}

/// A DNS query for SRV `name`; the raw reply (any rcode).
async fn query(ns: SocketAddr, name: &str) -> std::io::Result<Vec<u8>> {
    let id = random_below(u16::MAX as u32) as u16;
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new(name).map_err(std::io::Error::other)?;
    q.questions.push(Question::new(
        qname,
        QTYPE::TYPE(TYPE::SRV),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let bytes = q.build_bytes_vec().map_err(std::io::Error::other)?;
    let bind: SocketAddr = if ns.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(ns).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(reply) = Packet::parse(&buf[..n]) else {
            continue;
        };
        if reply.id() != id || !reply.has_flags(PacketFlag::RESPONSE) {
            continue; // not ours: keep waiting (the caller's timeout bounds it)
        }
        if !reply.has_flags(PacketFlag::TRUNCATION) {
            return Ok(buf[..n].to_vec());
        }
        break;
    }
    // Truncated: the same question over TCP (RFC 7766).
    let mut tcp = TcpStream::connect(ns).await?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    tcp.write_all(&framed).await?;
    let len = tcp.read_u16().await? as usize;
    let mut reply = vec![0u8; len];
    tcp.read_exact(&mut reply).await?;
    Ok(reply)
}

fn servfail(reply: &[u8]) -> bool {
    Packet::parse(reply).is_ok_and(|p| p.rcode() == RCODE::ServerFailure)
}

fn parse_srv(reply: &[u8], direct_tls: bool) -> Vec<Srv> {
    let Ok(p) = Packet::parse(reply) else {
        return Vec::new();
    };
    if p.rcode() != RCODE::NoError {
        return Vec::new(); // NXDOMAIN and the like: no records
    }
    p.answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::SRV(s) => Some(Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                host: s.target.to_string().trim_end_matches('.').to_string(),
                direct_tls,
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16, direct_tls: bool) -> Srv {
        Srv {
            priority,
            weight,
            port,
            host: "h".into(),
            direct_tls,
        }
    }

    #[test]
    fn priority_first_then_direct_tls_on_ties() {
        let got = order(vec![
            rec(20, 0, 1, false),
            rec(10, 0, 2, false),
            rec(10, 0, 3, true),
        ]);
        let ports: Vec<u16> = got.iter().map(|r| r.port).collect();
        assert_eq!(ports, vec![3, 2, 1]);
    }

    #[test]
    fn zero_weight_records_are_kept() {
        let got = order(vec![rec(5, 0, 1, false), rec(5, 10, 2, false)]);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn parses_srv_answers() {
        use simple_dns::ResourceRecord;
        use simple_dns::rdata::SRV;
        let mut p = Packet::new_reply(7);
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("_xmpp-server._tcp.example.org"),
            CLASS::IN,
            60,
            RData::SRV(SRV {
                priority: 1,
                weight: 2,
                port: 5299,
                target: Name::new_unchecked("xmpp.example.org"),
            }),
        ));
        let bytes = p.build_bytes_vec().unwrap();
        let got = parse_srv(&bytes, false);
        assert_eq!(
            got,
            vec![Srv {
                priority: 1,
                weight: 2,
                port: 5299,
                host: "xmpp.example.org".into(),
                direct_tls: false
            }]
        );
    }
}
