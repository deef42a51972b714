//! Where the router may send a client's request: a worker URL is `http://host:port` and
//! nothing else, optionally from an allow-list of hosts and networks.
//!
//! Anyone who can write the registry can name a worker, so its URL is untrusted: a path or
//! query (`http://h:1/internal/admin?target=`) would steer a client's request to another
//! endpoint of that host, and userinfo or a fragment has no business there. `--worker` flags
//! get the same check. The allow-list (`--allow-worker-host`) keeps a forged registry entry
//! from pointing outside the fleet's own network; a rejected entry is logged and counted.

use std::net::IpAddr;

use ipnet::IpNet;
use url::{Host, Url};

/// Why a worker URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadWorkerUrl {
    #[error("{0:?} is not a URL: {1}")]
    Parse(String, String),
    #[error("{0:?}: the scheme must be http (TLS to engines is not built in)")]
    Scheme(String),
    #[error("{0:?}: only scheme, host and port are allowed (no path, query, fragment or user)")]
    Extra(String),
    #[error("{0:?}: no host")]
    NoHost(String),
    #[error("{0:?}: the host is not in --allow-worker-host")]
    NotAllowed(String),
}

/// `http://host:port` with an optional trailing `/`, normalized to no trailing slash.
pub(crate) fn validate(raw: &str) -> Result<String, BadWorkerUrl> {
    let url = Url::parse(raw).map_err(|e| BadWorkerUrl::Parse(raw.to_owned(), e.to_string()))?;
    if url.scheme() != "http" {
        return Err(BadWorkerUrl::Scheme(raw.to_owned()));
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || raw.trim_end_matches('/').contains('?')
    {
        return Err(BadWorkerUrl::Extra(raw.to_owned()));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| BadWorkerUrl::NoHost(raw.to_owned()))?;
    Ok(match url.port() {
        Some(p) => format!("http://{host}:{p}"),
        None => format!("http://{host}"),
    })
}

/// One `--allow-worker-host` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A network (`10.0.0.0/8`) or one address.
    Net(IpNet),
    /// A host name, exactly.
    Name(String),
    /// `*.suffix`: any name ending in `.suffix`.
    Suffix(String),
}

/// The hosts workers may be on; empty allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

impl AllowList {
    /// Parses `--allow-worker-host` values: CIDR networks, addresses, names, `*.suffix`.
    pub fn parse(specs: &[String]) -> Result<AllowList, String> {
        let patterns = specs
            .iter()
            .map(|s| {
                let s = s.trim();
                if let Ok(net) = s.parse::<IpNet>() {
                    Ok(Pattern::Net(net))
                } else if let Ok(ip) = s.parse::<IpAddr>() {
                    Ok(Pattern::Net(IpNet::from(ip)))
                } else if let Some(suffix) = s.strip_prefix("*.") {
                    valid_name(suffix)
                        .then(|| Pattern::Suffix(suffix.to_ascii_lowercase()))
                        .ok_or_else(|| format!("--allow-worker-host {s:?}: not a host pattern"))
                } else if valid_name(s) {
                    Ok(Pattern::Name(s.to_ascii_lowercase()))
                } else {
                    Err(format!(
                        "--allow-worker-host {s:?}: expected a CIDR network, an address, a host \
                         name or *.suffix"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the host of a [`validate`]d URL is allowed.
    pub fn allows(&self, url: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let Ok(parsed) = Url::parse(url) else {
            return false;
        };
        match parsed.host() {
            Some(Host::Ipv4(ip)) => self.allows_ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.allows_ip(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => {
                let name = name.to_ascii_lowercase();
                self.patterns.iter().any(|p| match p {
                    Pattern::Name(n) => *n == name,
                    Pattern::Suffix(s) => name
                        .strip_suffix(s.as_str())
                        .is_some_and(|head| head.ends_with('.') && head.len() > 1),
                    Pattern::Net(_) => false,
                })
            }
            None => false,
        }
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.patterns
            .iter()
            .any(|p| matches!(p, Pattern::Net(net) if net.contains(&ip)))
    }

    /// [`validate`], then the allow-list.
    pub fn check(&self, raw: &str) -> Result<String, BadWorkerUrl> {
        let url = validate(raw)?;
        if self.allows(&url) {
            Ok(url)
        } else {
            Err(BadWorkerUrl::NotAllowed(raw.to_owned()))
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
        && !s.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_host_and_port() {
        assert_eq!(
            validate("http://10.0.0.5:8000/"),
            Ok("http://10.0.0.5:8000".into())
        );
        assert_eq!(
            validate("http://engine-1:8000"),
            Ok("http://engine-1:8000".into())
        );
        assert_eq!(validate("http://[::1]:9"), Ok("http://[::1]:9".into()));
        for bad in [
            "http://h:1/internal/admin?target=",
            "http://h:1/v1",
            "http://h:1?x=1",
            "http://h:1/?",
            "http://h:1#frag",
            "http://user:pw@h:1",
            "http://user@h:1",
            "https://h:1",
            "ftp://h:1",
            "h:1",
            "http://",
            "not a url",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_allow_list_takes_networks_names_and_suffixes() {
        let a = AllowList::parse(&[
            "10.0.0.0/8".into(),
            "192.168.1.7".into(),
            "engine-1".into(),
            "*.gpu.internal".into(),
        ])
        .unwrap();
        for ok in [
            "http://10.2.3.4:8000",
            "http://192.168.1.7:1",
            "http://ENGINE-1:8000",
            "http://a.gpu.internal:80",
        ] {
            assert!(a.check(ok).is_ok(), "{ok}");
        }
        for no in [
            "http://11.0.0.1:8000",
            "http://192.168.1.8:1",
            "http://engine-2:8000",
            "http://gpu.internal:80",
            "http://evilgpu.internal:80",
            "http://169.254.169.254:80",
        ] {
            assert_eq!(
                a.check(no),
                Err(BadWorkerUrl::NotAllowed(no.into())),
                "{no}"
            );
        }
        assert!(AllowList::default().check("http://anything:1").is_ok());
        for bad in ["*.", "a b", "10.0.0.0/99", ".x", "*"] {
            assert!(AllowList::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
