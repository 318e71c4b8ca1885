//! The URL policy, in one place: every URL the gateway fetches (result files) or hands on (a
//! `url` answer, a client's reference image) is `https` unless `[urls] allow_http`, and never
//! points at loopback, private, link-local (cloud metadata included) or other special addresses
//! unless `[urls] allow_loopback` / `allow_private` say so.
//!
//! For downloads the check is on the **resolved** addresses: the download client resolves names
//! through [`CheckedResolver`], which drops refused addresses and connects only to the ones it
//! checked — so a name that resolves to a private address (or is re-pointed there between two
//! lookups) is never reached. An address written in the URL itself is checked before the call.
//! Client reference URLs are fetched by the platform, not by the gateway: their literal
//! addresses and `localhost` names are checked here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::UrlsConfig;

/// What URLs may be.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    allow_http: bool,
    allow_loopback: bool,
    allow_private: bool,
}

impl UrlPolicy {
    pub fn new(config: &UrlsConfig) -> Self {
        Self {
            allow_http: config.allow_http,
            allow_loopback: config.allow_loopback,
            allow_private: config.allow_private,
        }
    }

    /// Everything in the URL itself: scheme, a host, and the address when it is written out.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("only https URLs are allowed ([urls] allow_http)".to_owned()),
            other => return Err(format!("`{other}` URLs are not allowed")),
        }
        match url.host() {
            None => Err("the URL has no host".to_owned()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost")) && !self.allow_loopback {
                    Err("loopback hosts are not allowed ([urls] allow_loopback)".to_owned())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether an address may be reached.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        match special(ip) {
            None => Ok(()),
            Some(Range::Loopback) if self.allow_loopback => Ok(()),
            Some(Range::Private) if self.allow_private => Ok(()),
            Some(range) => Err(format!("{ip} is a {} address", range.as_str())),
        }
    }

    /// A resolver for the download client that keeps only the addresses this policy allows.
    pub fn resolver(self) -> Arc<CheckedResolver> {
        Arc::new(CheckedResolver { policy: self })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Loopback,
    Private,
    LinkLocal,
    Other,
}

impl Range {
    fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::Other => "special-purpose",
        }
    }
}

/// The special range an address is in, if any.
fn special(ip: IpAddr) -> Option<Range> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some(Range::Loopback)
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                // RFC 1918, and the shared (carrier-grade NAT) range 100.64.0.0/10.
                Some(Range::Private)
            } else if v4.is_link_local() {
                // 169.254.0.0/16: the cloud metadata service lives here.
                Some(Range::LinkLocal)
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
            {
                Some(Range::Other)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some(Range::Loopback)
            } else if first & 0xfe00 == 0xfc00 {
                // fc00::/7, unique local.
                Some(Range::Private)
            } else if first & 0xffc0 == 0xfe80 {
                Some(Range::LinkLocal)
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some(Range::Other)
            } else {
                None
            }
        }
    }
}

/// Resolves names for result downloads and keeps only the addresses the policy allows; the
/// connection then goes to one of those, never to an address that was not checked.
#[derive(Debug)]
pub struct CheckedResolver {
    policy: UrlPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.check_ip(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                let why = found.first().map_or("no address".to_owned(), |a| {
                    policy.check_ip(a.ip()).err().unwrap_or_default()
                });
                return Err(format!("{host} resolves to no allowed address ({why})").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn strict_by_default() {
        let p = UrlPolicy::default();
        assert!(p.check(&url("https://r2.apimodels.app/a.png")).is_ok());
        for bad in [
            "http://r2.apimodels.app/a.png",
            "ftp://r2.apimodels.app/a.png",
            "https://127.0.0.1/a.png",
            "https://localhost:8080/a.png",
            "https://10.1.2.3/a.png",
            "https://172.20.0.1/a.png",
            "https://192.168.1.1/a.png",
            "https://100.64.0.1/a.png",
            "http://169.254.169.254/latest/meta-data",
            "https://[::1]/a.png",
            "https://[fd00::1]/a.png",
            "https://[fe80::1]/a.png",
            "https://[::ffff:10.0.0.1]/a.png",
            "https://0.0.0.0/a.png",
        ] {
            assert!(p.check(&url(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowances_open_only_their_range() {
        let p = UrlPolicy::new(&UrlsConfig {
            allow_http: true,
            allow_loopback: true,
            allow_private: false,
        });
        assert!(p.check(&url("http://127.0.0.1:9090/files/a.png")).is_ok());
        assert!(p.check(&url("http://localhost/a.png")).is_ok());
        assert!(p.check(&url("http://10.0.0.1/a.png")).is_err());
        assert!(p.check(&url("http://169.254.169.254/")).is_err());
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_allowed_addresses() {
        let strict = UrlPolicy::default().resolver();
        let name: Name = "localhost".parse().unwrap();
        assert!(strict.resolve(name).await.is_err());
        let open = UrlPolicy::new(&UrlsConfig {
            allow_http: true,
            allow_loopback: true,
            allow_private: false,
        })
        .resolver();
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = open.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
