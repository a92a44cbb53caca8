//! [`ClientIpLayer`]: the client's address behind trusted proxies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::request::Parts;
use ipnet::IpNet;
use tower::{Layer, Service};

use super::ClientIp;

/// The connection's peer address, for servers that are not axum (axum's
/// `ConnectInfo<SocketAddr>` is read too, with the `axum` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer of the connection, from [`PeerAddr`] or axum's `ConnectInfo`.
pub(super) fn peer(p: &Parts) -> Option<IpAddr> {
    peer_of(&p.extensions)
}

fn peer_of(ext: &http::Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(a)) = ext.get::<PeerAddr>() {
        return Some(a.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(ci) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(ci.0.ip());
    }
    None
}

/// Puts the client's address in the request as [`ClientIp`]: the connection's peer,
/// unless the peer is one of the configured proxies (your load balancer), in which case
/// the address the proxies recorded (`Forwarded: for=…`, else `X-Forwarded-For`), read from
/// the right and skipping the trusted proxies themselves. A client that is not a
/// configured proxy cannot choose its address by sending those headers.
///
/// ```
/// use saas_core::ratelimit::ClientIpLayer;
/// let layer = ClientIpLayer::trusting(["10.0.0.0/8".parse().unwrap()]);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: Arc<[IpNet]>,
}

impl ClientIpLayer {
    /// Trusts no proxy: the client is the peer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies in `nets` to report the client's address.
    pub fn trusting<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        Self {
            trusted: nets.into_iter().collect(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request with these headers from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return canonical(peer);
        }
        let chain = forwarded_for(headers);
        // Right to left: the nearest hop first; the first address no trusted proxy owns is
        // the client (anything to its left was written by the client itself).
        for ip in chain.iter().rev() {
            if !self.is_trusted(*ip) {
                return canonical(*ip);
            }
        }
        chain.first().copied().map_or(canonical(peer), canonical)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` addresses of `Forwarded` (RFC 7239), or else those of `X-Forwarded-For`,
/// in order; unparsable entries (`unknown`, obfuscated names) are left out.
fn forwarded_for(headers: &http::HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::FORWARDED) {
        let Ok(v) = v.to_str() else { continue };
        for element in v.split(',') {
            for pair in element.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for")
                    && let Some(ip) = parse_node(val.trim().trim_matches('"'))
                {
                    out.push(ip);
                }
            }
        }
    }
    if !out.is_empty() {
        return out;
    }
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else { continue };
        out.extend(v.split(',').filter_map(|s| parse_node(s.trim())));
    }
    out
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    layer: ClientIpLayer,
}

impl<S, B> Service<Request<B>> for ClientIpService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = peer_of(req.extensions()) {
            let client = self.layer.client(peer, req.headers());
            req.extensions_mut().insert(ClientIp(client));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_peers_speak_for_the_client() {
        let layer = ClientIpLayer::trusting(["10.0.0.0/8".parse().unwrap(), "2001:db8:ffff::/48".parse().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A client sending the headers itself: ignored.
        assert_eq!(
            layer.client(ip("198.51.100.7"), &headers(&[("x-forwarded-for", "127.0.0.1")])),
            ip("198.51.100.7")
        );
        // Through the balancer: the address it appended, not what the client prepended.
        assert_eq!(
            layer.client(
                ip("10.0.0.1"),
                &headers(&[("x-forwarded-for", "127.0.0.1, 203.0.113.5, 10.0.0.9")])
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            layer.client(
                ip("10.0.0.1"),
                &headers(&[(
                    "forwarded",
                    "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\""
                )])
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            layer.client(ip("::ffff:10.0.0.1"), &headers(&[("x-forwarded-for", "203.0.113.9")])),
            ip("203.0.113.9")
        );
        // No header from a trusted peer: the peer.
        assert_eq!(layer.client(ip("10.0.0.1"), &headers(&[])), ip("10.0.0.1"));
        // Nothing trusted: the peer, whatever the headers.
        assert_eq!(
            ClientIpLayer::new().client(ip("10.0.0.1"), &headers(&[("x-forwarded-for", "203.0.113.5")])),
            ip("10.0.0.1")
        );
    }
}
