//! Who a request came from, for the logs: the socket's peer, or, when that peer is a trusted
//! proxy (`trusted_proxies`), the address the proxies recorded in `X-Forwarded-For`.
//!
//! The header is read right to left, the way it was written: each proxy appends the address
//! it received the request from. Starting at the socket's peer, while the current hop is a
//! trusted proxy, the next address to the left is where it got the request from. The first
//! hop that is not trusted is the client; anything further left was written by the client
//! itself and proves nothing. A hop that does not parse stops the walk at the last trusted
//! proxy. Nothing here decides access: the address only reaches the logs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use tracing::Instrument;

use crate::HubState;
use crate::config::TrustedProxy;

/// The socket's peer, put in each request's extensions by the connection that read it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address as [`client_address`] decided, in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The client behind `peer`, given the request's headers and the trusted proxies.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[TrustedProxy]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !is_trusted(client, trusted) {
        return client;
    }
    let hops = headers.get_all("x-forwarded-for").iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Some(addr) = std::str::from_utf8(hop).ok().and_then(parse_hop) else { break };
        client = addr.to_canonical();
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

fn is_trusted(addr: IpAddr, trusted: &[TrustedProxy]) -> bool {
    trusted.iter().any(|net| net.0.contains(&addr))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(addr) = hop.parse() {
        return Some(addr);
    }
    if let Ok(with_port) = hop.parse::<SocketAddr>() {
        return Some(with_port.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// Decides each request's [`ClientAddr`] and runs the request inside a `request` span carrying
/// it, so every line logged while handling the request names the client.
/// `trusted_proxies` is read from the configuration in effect (a reload may change it).
pub(crate) async fn record_client(State(hub): State<Arc<HubState>>, mut req: Request, next: Next) -> Response {
    let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>().copied() else {
        return next.run(req).await;
    };
    let client = client_address(peer.ip(), req.headers(), &hub.config().trusted_proxies);
    req.extensions_mut().insert(ClientAddr(client));
    next.run(req).instrument(tracing::info_span!("request", %client)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(peer: &str, forwarded: &[&str], trusted: &[&str], expected: &str) {
        let mut headers = HeaderMap::new();
        for f in forwarded {
            headers.append("x-forwarded-for", f.parse().unwrap());
        }
        let trusted: Vec<TrustedProxy> = trusted.iter().map(|t| TrustedProxy::try_from((*t).to_owned()).unwrap()).collect();
        let got = client_address(peer.parse().unwrap(), &headers, &trusted);
        assert_eq!(got.to_string(), expected, "peer {peer}, X-Forwarded-For {forwarded:?}, trusted {trusted:?}");
    }

    #[test]
    fn the_header_counts_only_from_trusted_proxies() {
        // No trusted proxies, or an untrusted peer: the header is ignored.
        check("198.51.100.9", &["203.0.113.7"], &[], "198.51.100.9");
        check("198.51.100.9", &["203.0.113.7"], &["10.0.0.0/8"], "198.51.100.9");
        // A trusted peer: the address it recorded.
        check("10.0.0.2", &["203.0.113.7"], &["10.0.0.0/8"], "203.0.113.7");
        // What the client wrote itself (left of the first untrusted hop) proves nothing.
        check("10.0.0.2", &["1.1.1.1, 203.0.113.7"], &["10.0.0.0/8"], "203.0.113.7");
        // Several trusted hops, in one header or several: read right to left past all of them.
        check("10.0.0.2", &["203.0.113.7, 10.9.9.9"], &["10.0.0.0/8"], "203.0.113.7");
        check("10.0.0.2", &["198.51.100.1, 203.0.113.7", "10.9.9.9"], &["10.0.0.0/8"], "203.0.113.7");
        // Every hop trusted: the leftmost.
        check("10.0.0.2", &["10.1.1.1, 10.2.2.2"], &["10.0.0.0/8"], "10.1.1.1");
        // A trusted peer that forwards no header is the client.
        check("10.0.0.2", &[], &["10.0.0.0/8"], "10.0.0.2");
    }

    #[test]
    fn hops_with_ports_ipv6_and_garbage() {
        check("127.0.0.1", &["203.0.113.7:5678"], &["127.0.0.1"], "203.0.113.7");
        check("::1", &["[2001:db8::1]:443"], &["::1"], "2001:db8::1");
        check("::1", &["2001:db8::1"], &["::1"], "2001:db8::1");
        // An IPv4 peer seen through an IPv6 socket is still the IPv4 address.
        check("::ffff:127.0.0.1", &["203.0.113.7"], &["127.0.0.1"], "203.0.113.7");
        // A hop that does not parse stops the walk at the last trusted proxy.
        check("127.0.0.1", &["203.0.113.7, unknown"], &["127.0.0.1"], "127.0.0.1");
        check("127.0.0.1", &["203.0.113.7, 10.0.0.5, bogus, 10.0.0.6"], &["127.0.0.1", "10.0.0.0/8"], "10.0.0.6");
    }
}
