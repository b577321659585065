//! The egress policy: where the controller's own outbound requests made for an app
//! (`http` and `smoke` gates, `metrics` queries, notification webhooks) may go.
//!
//! A Runbook is the tenant's input, and these requests leave from the controller's
//! network position: without a policy a gate reads cloud metadata (169.254.169.254),
//! the API server, or the controller's own ports, and quotes the answer into the
//! tenant's status. A rule is checked against every address actually connected to:
//! the address written in the URL (an IP literal skips DNS), and otherwise every
//! address a host name resolves to, filtered by [`EgressPolicy`]'s resolver as it
//! resolves (so a name that resolves differently the second time, DNS rebinding, is
//! checked again on the address used); every redirect hop is checked the same way.
//!
//! Precedence, first match wins:
//! 1. an explicit deny (`--egress-deny`);
//! 2. a built-in denial of a socket address: the Kubernetes API server (from the
//!    kubeconfig or in-cluster URL, resolved) and the controller's own listeners
//!    (`--listen-address`, `--webhook-listen-address`). No allow lifts these, so a test
//!    may allow loopback gate endpoints while the API server on loopback stays refused;
//! 3. an explicit allow (`--egress-allow`);
//! 4. a built-in denial of a network: link-local (169.254.0.0/16, fe80::/10), loopback
//!    (127.0.0.0/8, ::1: in a Pod, that is the controller itself), the unspecified
//!    address (0.0.0.0/8, ::, which Linux connects to the local host) and the
//!    controller's own interface addresses;
//! 5. anything else is allowed.
//!
//! A rule is a CIDR (`10.0.0.0/8`), an address (`169.254.169.254`, `::1`), or a host
//! name (`metadata.google.internal`, `*.internal` for any name under `internal`), each
//! optionally with a port (`127.0.0.1:8080`, `[::1]:8080`, `db.example:5432`).
//! A host-name rule matches the name written in the URL (or a redirect's `Location`),
//! never an address. When a request goes by host name the resolver does not learn
//! the port: a port-specific denial (explicit or built-in) then refuses the address
//! whatever the port, and a port-specific allow does not apply: the safe reading.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:169.254.169.254`) are judged as the IPv4
//! address they reach; decimal, octal and hexadecimal IPv4 forms are normalised by
//! the URL parser before the check (`http://2852039166/` is 169.254.169.254).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;

/// A network: an address and how many leading bits of it count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, String> {
        let address = canonical(address);
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!("prefix /{prefix} is longer than {bits} bits"));
        }
        Ok(Self { address, prefix })
    }

    /// The single address `address`.
    pub fn host(address: IpAddr) -> Self {
        let address = canonical(address);
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        Self { address, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_equal(
                u128::from(net.to_bits()) << 96,
                u128::from(ip.to_bits()) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_equal(net.to_bits(), ip.to_bits(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_equal(a: u128, b: u128, prefix: u8) -> bool {
    match prefix {
        0 => true,
        p => (a ^ b) >> (128 - u32::from(p)) == 0,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').ok_or("no /prefix")?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("prefix {prefix:?} is not a number"))?;
        Self::new(address, prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Net(Cidr),
    /// A host name, lower case, without a trailing dot.
    Host(String),
    /// `*.SUFFIX`: any name under `SUFFIX` (stored as `.suffix`), not `SUFFIX` itself.
    Under(String),
}

/// One `--egress-allow` or `--egress-deny` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    target: Target,
    port: Option<u16>,
    /// As written, for messages.
    written: String,
}

impl FromStr for Rule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let written = text.trim().to_string();
        let problem = |why: &str| format!("egress rule {written:?}: {why}");
        if written.is_empty() {
            return Err(problem("empty"));
        }
        let (target, port) = if written.contains('/') {
            (
                Target::Net(written.parse::<Cidr>().map_err(|e| problem(&e))?),
                None,
            )
        } else if let Ok(ip) = written.parse::<IpAddr>() {
            (Target::Net(Cidr::host(ip)), None)
        } else if let Ok(socket) = written.parse::<SocketAddr>() {
            (Target::Net(Cidr::host(socket.ip())), Some(socket.port()))
        } else if let Some(ip) = written
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inner| inner.parse::<IpAddr>().ok())
        {
            (Target::Net(Cidr::host(ip)), None)
        } else {
            let (host, port) = match written.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    Some(
                        port.parse::<u16>()
                            .map_err(|_| problem(&format!("port {port:?} is not a number")))?,
                    ),
                ),
                None => (written.as_str(), None),
            };
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let (under, name) = match host.strip_prefix("*.") {
                Some(name) => (true, name.to_string()),
                None => (false, host),
            };
            let valid = !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                return Err(problem(
                    "expected a CIDR (10.0.0.0/8), an address, or a host name (example.com, *.example.com), \
                     optionally with :PORT",
                ));
            }
            let target = if under {
                Target::Under(format!(".{name}"))
            } else {
                Target::Host(name)
            };
            (target, port)
        };
        Ok(Rule {
            target,
            port,
            written,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Rule {
    /// Whether the rule covers a connection to `ip` (reached by the name `host`, when
    /// by name) on `port` (`None`: not known, the resolver's case). `lenient_port`: a
    /// rule with a port matches an unknown port (a denial's safe reading).
    fn matches(&self, host: Option<&str>, ip: Option<IpAddr>, port: Option<u16>, lenient_port: bool) -> bool {
        let port_ok = match (self.port, port) {
            (None, _) => true,
            (Some(rule), Some(port)) => rule == port,
            (Some(_), None) => lenient_port,
        };
        port_ok
            && match &self.target {
                Target::Net(net) => ip.is_some_and(|ip| net.contains(ip)),
                Target::Host(name) => host.is_some_and(|host| normal_host(host) == *name),
                Target::Under(suffix) => {
                    host.is_some_and(|host| normal_host(host).ends_with(suffix.as_str()))
                }
            }
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a request was not sent: the host it was for, the address when one was
/// judged, and the rule that refused it. Never the URL's path or query (a smoke
/// step's captured values travel there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub address: Option<IpAddr>,
    pub rule: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(address) if address.to_string() != self.host.trim_matches(['[', ']', '.']) => write!(
                f,
                "host {} (address {address}) is refused by the egress policy: {}",
                self.host, self.rule
            ),
            _ => write!(
                f,
                "host {} is refused by the egress policy: {}",
                self.host, self.rule
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The refusal behind a failed request, if the egress policy refused it (the
/// resolver's or the redirect policy's error, somewhere in the error's causes).
pub(crate) fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        cause = current.source();
    }
    None
}

/// What the controller knows about itself and its cluster: the built-in denials.
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// The API server's addresses.
    pub api_server: Vec<SocketAddr>,
    /// Where the controller listens (`0.0.0.0:8080` stands for every own address).
    pub listeners: Vec<SocketAddr>,
    /// The addresses of the controller's network interfaces.
    pub own_addresses: Vec<IpAddr>,
}

impl Builtins {
    /// The API server of `cluster_url` (resolved now, and the in-cluster Service's
    /// address from the environment), the `listeners`, and the interface addresses.
    pub(crate) fn discover(cluster_url: &str, listeners: Vec<SocketAddr>) -> Self {
        let mut api_server = Vec::new();
        if let Ok(url) = Url::parse(cluster_url)
            && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
        {
            let host = host.trim_matches(['[', ']']);
            match host.parse::<IpAddr>() {
                Ok(ip) => api_server.push(SocketAddr::new(ip, port)),
                Err(_) => {
                    if let Ok(found) = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) {
                        api_server.extend(found);
                    }
                }
            }
        }
        // In a Pod, the `kubernetes` Service as the kubelet announces it.
        if let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) && let (Ok(ip), Ok(port)) = (host.parse::<IpAddr>(), port.parse::<u16>())
        {
            api_server.push(SocketAddr::new(ip, port));
        }
        let mut own_addresses = interface_addresses();
        if let Some(pod_ip) = std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok()) {
            own_addresses.push(pod_ip);
        }
        own_addresses.sort();
        own_addresses.dedup();
        Self {
            api_server,
            listeners,
            own_addresses,
        }
    }
}

/// The IPv4 and IPv6 addresses of this host's interfaces, from `/proc` (Linux; empty
/// elsewhere: loopback stays denied by its own rule).
fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    // `/proc/net/fib_trie` lists each local IPv4 address as `|-- ADDR` followed by
    // `/32 host LOCAL`.
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<Ipv4Addr> = None;
        for line in trie.lines() {
            let line = line.trim();
            if let Some(address) = line.strip_prefix("|-- ") {
                last = address.trim().parse().ok();
            } else if line.contains("host LOCAL")
                && let Some(address) = last
            {
                found.push(IpAddr::V4(address));
            }
        }
    }
    // `/proc/net/if_inet6`: the address in 32 hex digits first on each line.
    if let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in table.lines() {
            if let Some(hex) = line.split_whitespace().next()
                && let Ok(bits) = u128::from_str_radix(hex, 16)
            {
                found.push(IpAddr::V6(Ipv6Addr::from_bits(bits)));
            }
        }
    }
    found
}

/// A denial built in, with how messages name it.
#[derive(Clone, Debug)]
struct BuiltinNet {
    net: Cidr,
    why: String,
}

#[derive(Clone, Debug)]
struct BuiltinSocket {
    socket: SocketAddr,
    why: &'static str,
}

#[derive(Debug)]
struct Rules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    sockets: Vec<BuiltinSocket>,
    nets: Vec<BuiltinNet>,
}

/// The policy every outbound request for an app passes (cheap to clone).
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    rules: Arc<Rules>,
}

impl EgressPolicy {
    /// The built-in denials of `builtins`, then `allow` and `deny` on top (see the
    /// module's precedence).
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, builtins: &Builtins) -> Self {
        let mut nets: Vec<BuiltinNet> = [
            ("169.254.0.0/16", "link-local (cloud metadata)"),
            ("fe80::/10", "link-local"),
            ("127.0.0.0/8", "loopback (the controller itself)"),
            ("::1/128", "loopback (the controller itself)"),
            ("0.0.0.0/8", "the unspecified address (the controller itself)"),
            ("::/128", "the unspecified address (the controller itself)"),
        ]
        .into_iter()
        .map(|(net, why)| BuiltinNet {
            net: net.parse().expect("built-in networks parse"),
            why: why.to_string(),
        })
        .collect();
        nets.extend(builtins.own_addresses.iter().map(|ip| BuiltinNet {
            net: Cidr::host(*ip),
            why: "an address of the controller itself".to_string(),
        }));
        let mut sockets: Vec<BuiltinSocket> = builtins
            .api_server
            .iter()
            .map(|socket| BuiltinSocket {
                socket: SocketAddr::new(canonical(socket.ip()), socket.port()),
                why: "the Kubernetes API server",
            })
            .collect();
        for listener in &builtins.listeners {
            let ips: Vec<IpAddr> = if listener.ip().is_unspecified() {
                // Listening everywhere: on loopback and on every own address.
                [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
                    .into_iter()
                    .chain(builtins.own_addresses.iter().copied())
                    .collect()
            } else {
                vec![listener.ip()]
            };
            sockets.extend(ips.into_iter().map(|ip| BuiltinSocket {
                socket: SocketAddr::new(canonical(ip), listener.port()),
                why: "a listener of the controller itself",
            }));
        }
        Self {
            rules: Arc::new(Rules {
                allow,
                deny,
                sockets,
                nets,
            }),
        }
    }

    /// Parses `--egress-allow` and `--egress-deny` values (each may hold several,
    /// comma-separated, as the environment variables do).
    pub fn from_flags(allow: &[String], deny: &[String], builtins: &Builtins) -> Result<Self, String> {
        let parse = |values: &[String]| -> Result<Vec<Rule>, String> {
            values
                .iter()
                .flat_map(|value| value.split(','))
                .filter(|value| !value.trim().is_empty())
                .map(str::parse)
                .collect()
        };
        Ok(Self::new(parse(allow)?, parse(deny)?, builtins))
    }

    /// No denial at all: for tests of code that is not about egress.
    pub fn unrestricted() -> Self {
        Self {
            rules: Arc::new(Rules {
                allow: Vec::new(),
                deny: Vec::new(),
                sockets: Vec::new(),
                nets: Vec::new(),
            }),
        }
    }

    /// Judges a connection to `ip` on `port` (`None`: not known), reached by the name
    /// `host` when by name. `shown` is how a refusal names the host.
    pub fn check(&self, host: Option<&str>, ip: IpAddr, port: Option<u16>) -> Result<(), Refusal> {
        let ip = canonical(ip);
        let refuse = |rule: String| Refusal {
            host: host.map_or_else(|| ip.to_string(), str::to_string),
            address: Some(ip),
            rule,
        };
        let rules = &self.rules;
        if let Some(rule) = rules.deny.iter().find(|r| r.matches(host, Some(ip), port, true)) {
            return Err(refuse(format!("--egress-deny {}", rule.written)));
        }
        if let Some(builtin) = rules
            .sockets
            .iter()
            .find(|b| b.socket.ip() == ip && port.is_none_or(|port| port == b.socket.port()))
        {
            return Err(refuse(format!(
                "built-in denial of {} ({}), which no --egress-allow lifts",
                builtin.socket, builtin.why
            )));
        }
        if rules.allow.iter().any(|r| r.matches(host, Some(ip), port, false)) {
            return Ok(());
        }
        if let Some(builtin) = rules.nets.iter().find(|b| b.net.contains(ip)) {
            return Err(refuse(format!(
                "built-in denial of {} ({}; --egress-allow lifts it)",
                builtin.net, builtin.why
            )));
        }
        Ok(())
    }

    /// The part of the check a URL allows before any connection: its host name
    /// against the name rules, or its address when it is an IP literal (which no
    /// resolver sees). A URL without a host is refused.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        let port = url.port_or_known_default();
        let Some(host) = url.host_str().filter(|host| !host.is_empty()) else {
            return Err(Refusal {
                host: String::new(),
                address: None,
                rule: "a URL without a host".into(),
            });
        };
        // The parser wrote IPv4 literals in their normal form and IPv6 ones in brackets;
        // an IP written as a name (with a trailing dot, say) is judged as the IP too.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(None, ip, port).map_err(|refusal| Refusal {
                host: host.to_string(),
                ..refusal
            });
        }
        match self
            .rules
            .deny
            .iter()
            .find(|r| r.matches(Some(host), None, port, true))
        {
            Some(rule) => Err(Refusal {
                host: host.to_string(),
                address: None,
                rule: format!("--egress-deny {}", rule.written),
            }),
            None => Ok(()),
        }
    }

    /// A client builder whose every connection passes the policy: resolved addresses
    /// are filtered by it, and no proxy is used (a proxy would connect for us, to
    /// addresses this check never sees).
    pub(crate) fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver { policy: self.clone() }))
    }

    /// Follows at most `max` redirects, each to a URL the policy allows (its host
    /// name, or its IP literal; a name's addresses are checked by the resolver).
    pub(crate) fn redirect_policy(&self, max: usize) -> redirect::Policy {
        let policy = self.clone();
        redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        })
    }
}

/// Resolves with the system resolver, then keeps the addresses the policy allows; none
/// left is a [`Refusal`] (of the first address refused).
struct PolicyResolver {
    policy: EgressPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check(Some(&host), address.ip(), None) {
                    Ok(()) => true,
                    Err(refusal) => {
                        refused.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let refusal = refused.unwrap_or_else(|| Refusal {
                    host: host.clone(),
                    address: None,
                    rule: "the name resolves to no address".into(),
                });
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(values: &[&str]) -> Vec<Rule> {
        values.iter().map(|v| v.parse().expect("a rule")).collect()
    }

    fn api_on_loopback() -> Builtins {
        Builtins {
            api_server: vec!["127.0.0.1:6443".parse().unwrap()],
            listeners: vec!["0.0.0.0:8080".parse().unwrap()],
            own_addresses: vec!["10.1.2.3".parse().unwrap()],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn url_check(policy: &EgressPolicy, url: &str) -> Result<(), Refusal> {
        policy.check_url(&Url::parse(url).expect("a URL"))
    }

    #[test]
    fn rules_parse_cidrs_addresses_hosts_and_ports() {
        let parsed: Rule = "10.0.0.0/8".parse().unwrap();
        assert_eq!(parsed.target, Target::Net("10.0.0.0/8".parse().unwrap()));
        let parsed: Rule = "[::1]:8080".parse().unwrap();
        assert_eq!(
            (parsed.target, parsed.port),
            (Target::Net(Cidr::host(ip("::1"))), Some(8080))
        );
        let parsed: Rule = "Metadata.Google.Internal.".parse().unwrap();
        assert_eq!(parsed.target, Target::Host("metadata.google.internal".into()));
        let parsed: Rule = "*.svc.cluster.local:9090".parse().unwrap();
        assert_eq!(
            (parsed.target, parsed.port),
            (Target::Under(".svc.cluster.local".into()), Some(9090))
        );
        for bad in ["", "10.0.0.0/33", "a b", "host:port", "http://x", "::1/200"] {
            let error = bad.parse::<Rule>().expect_err(bad);
            assert!(error.starts_with("egress rule"), "{error}");
        }
    }

    #[test]
    fn defaults_refuse_metadata_loopback_own_addresses_and_the_api_server() {
        let policy = EgressPolicy::new(Vec::new(), Vec::new(), &api_on_loopback());
        for refused in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://127.0.0.1:9000/",
            "http://127.9.9.9/",
            "http://[::1]:9000/",
            "http://0.0.0.0:8080/",
            "http://[::]/",
            "http://10.1.2.3:5000/",
            "https://127.0.0.1:6443/api",
            // The URL parser's normal forms of IPv4 literals.
            "http://2852039166/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:7f00:1]/",
            "http://0/",
        ] {
            let refusal = url_check(&policy, refused).expect_err(refused);
            assert!(
                refusal.rule.starts_with("built-in denial"),
                "{refused}: {refusal}"
            );
        }
        for allowed in [
            "http://10.0.0.9/",
            "https://93.184.216.34/",
            "http://[2001:db8::1]/",
        ] {
            assert_eq!(url_check(&policy, allowed), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn an_allow_lifts_network_denials_but_not_the_api_server_nor_own_listeners() {
        let policy = EgressPolicy::new(rules(&["127.0.0.0/8"]), Vec::new(), &api_on_loopback());
        assert_eq!(url_check(&policy, "http://127.0.0.1:9000/health"), Ok(()));
        let api = url_check(&policy, "https://127.0.0.1:6443/api").expect_err("the API server");
        assert_eq!(
            api.to_string(),
            "host 127.0.0.1 is refused by the egress policy: built-in denial of 127.0.0.1:6443 \
             (the Kubernetes API server), which no --egress-allow lifts"
        );
        let metrics = url_check(&policy, "http://127.0.0.1:8080/metrics").expect_err("own listener");
        assert!(
            metrics.rule.contains("a listener of the controller itself"),
            "{metrics}"
        );
        // By name the port is not known: the API server's address is refused outright.
        let by_name = policy
            .check(Some("localhost"), ip("127.0.0.1"), None)
            .expect_err("by name");
        assert!(by_name.rule.contains("Kubernetes API server"), "{by_name}");
        assert_eq!(policy.check(Some("localhost"), ip("127.0.0.2"), None), Ok(()));
        // Other loopback ports of the own address's listener are fine once allowed.
        let own = EgressPolicy::new(rules(&["10.0.0.0/8"]), Vec::new(), &api_on_loopback());
        assert_eq!(url_check(&own, "http://10.1.2.3:5000/"), Ok(()));
        assert!(url_check(&own, "http://10.1.2.3:8080/").is_err());
    }

    #[test]
    fn an_explicit_deny_beats_an_allow_and_names_the_rule() {
        let policy = EgressPolicy::new(
            rules(&["127.0.0.0/8", "*.example.com"]),
            rules(&["127.0.0.2/32", "secret.example.com", "10.0.0.5:443"]),
            &Builtins::default(),
        );
        let refusal = url_check(&policy, "http://127.0.0.2:8000/x?token=abc").expect_err("denied");
        assert_eq!(
            refusal.to_string(),
            "host 127.0.0.2 is refused by the egress policy: --egress-deny 127.0.0.2/32"
        );
        assert!(!refusal.to_string().contains("token"));
        assert_eq!(url_check(&policy, "http://127.0.0.3:8000/"), Ok(()));
        let by_name = url_check(&policy, "https://SECRET.example.com./").expect_err("denied name");
        assert_eq!(by_name.rule, "--egress-deny secret.example.com");
        assert_eq!(url_check(&policy, "https://www.example.com/"), Ok(()));
        // A port-specific denial: that port only when known, any port by name.
        assert!(url_check(&policy, "https://10.0.0.5/").is_err());
        assert_eq!(url_check(&policy, "http://10.0.0.5/"), Ok(()));
        assert!(policy.check(Some("db"), ip("10.0.0.5"), None).is_err());
        // A host allow lifts a built-in denial for the addresses that name resolves to.
        let metadata = EgressPolicy::new(rules(&["metadata.internal"]), Vec::new(), &Builtins::default());
        assert_eq!(
            metadata.check(Some("metadata.internal"), ip("169.254.169.254"), None),
            Ok(())
        );
        assert!(
            metadata
                .check(Some("other"), ip("169.254.169.254"), None)
                .is_err()
        );
    }

    #[test]
    fn refusals_are_found_among_the_causes() {
        let refusal = Refusal {
            host: "h".into(),
            address: None,
            rule: "r".into(),
        };
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(refusal.clone());
        assert_eq!(refusal_in(boxed.as_ref()), Some(refusal));
        assert_eq!(refusal_in(&std::fmt::Error), None);
    }

    #[test]
    fn flags_split_on_commas() {
        let policy = EgressPolicy::from_flags(
            &["127.0.0.0/8, 10.0.0.0/8".into()],
            &["127.0.0.2".into()],
            &Builtins::default(),
        )
        .expect("valid");
        assert_eq!(policy.rules.allow.len(), 2);
        assert!(EgressPolicy::from_flags(&["nope/1".into()], &[], &Builtins::default()).is_err());
    }

    #[tokio::test]
    async fn the_resolver_filters_what_a_name_resolves_to() {
        let policy = EgressPolicy::new(Vec::new(), Vec::new(), &Builtins::default());
        let resolver = PolicyResolver { policy };
        let name = Name::from_str("localhost").expect("a name");
        let error = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost resolves to loopback only"),
            Err(error) => error,
        };
        let refusal = refusal_in(error.as_ref()).expect("a refusal");
        assert_eq!(refusal.host, "localhost");
        assert!(refusal.rule.contains("loopback"), "{refusal}");
    }

    #[tokio::test]
    async fn requests_and_redirects_are_refused_before_any_byte_is_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Stands in for a metadata server on a denied address; counts connections.
        let metadata = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let metadata_port = metadata.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = metadata.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nCANARY")
                    .await;
            }
        });
        // An allowed endpoint that redirects to it.
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let redirector_port = redirector.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = redirector.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:{metadata_port}/\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let policy = EgressPolicy::new(
            rules(&["127.0.0.0/8"]),
            rules(&["127.0.0.2/32"]),
            &Builtins::default(),
        );
        let client = policy
            .client_builder()
            .redirect(policy.redirect_policy(5))
            .build()
            .expect("client");
        let error = client
            .get(format!("http://127.0.0.1:{redirector_port}/"))
            .send()
            .await
            .expect_err("the redirect is refused");
        let refusal = refusal_in(&error).expect("a refusal");
        assert_eq!(refusal.rule, "--egress-deny 127.0.0.2/32");
        // A name that resolves to the denied address (here through the resolver).
        let by_name = EgressPolicy::new(Vec::new(), rules(&["localhost"]), &Builtins::default());
        let client = by_name.client_builder().build().expect("client");
        let error = client
            .get(format!("http://localhost:{metadata_port}/"))
            .send()
            .await
            .expect_err("refused");
        assert!(refusal_in(&error).is_some(), "{error:?}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from_bits(bits))),
            any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from_bits(bits))),
        ]
    }

    proptest! {
        #[test]
        fn cidr_contains_is_a_prefix_comparison(bits in any::<u32>(), other in any::<u32>(), prefix in 0u8..=32) {
            let net = Cidr::new(IpAddr::V4(Ipv4Addr::from_bits(bits)), prefix).unwrap();
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            prop_assert_eq!(net.contains(IpAddr::V4(Ipv4Addr::from_bits(other))), bits & mask == other & mask);
            prop_assert!(net.contains(IpAddr::V4(Ipv4Addr::from_bits(bits))));
        }

        #[test]
        fn mapped_addresses_are_judged_as_ipv4(bits in any::<u32>()) {
            let policy = EgressPolicy::new(Vec::new(), rules(&["203.0.113.0/24"]), &api_on_loopback());
            let v4 = IpAddr::V4(Ipv4Addr::from_bits(bits));
            let mapped = IpAddr::V6(Ipv4Addr::from_bits(bits).to_ipv6_mapped());
            prop_assert_eq!(policy.check(None, v4, Some(80)).is_ok(), policy.check(None, mapped, Some(80)).is_ok());
        }

        #[test]
        fn decimal_octal_and_hex_literals_are_judged_as_the_address_they_name(bits in any::<u32>(), port in 1u16..) {
            let policy = EgressPolicy::new(rules(&["127.0.0.0/8"]), rules(&["10.0.0.0/8"]), &api_on_loopback());
            let address = Ipv4Addr::from_bits(bits);
            let expected = policy.check(None, IpAddr::V4(address), Some(port)).is_ok();
            let [a, b, c, d] = address.octets();
            for written in [
                format!("{bits}"),
                format!("0x{bits:x}"),
                format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
                format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
                format!("{a}.{}", u32::from(b) << 16 | u32::from(c) << 8 | u32::from(d)),
            ] {
                let url = Url::parse(&format!("http://{written}:{port}/")).unwrap();
                prop_assert_eq!(url.host_str().map(str::to_string), Some(address.to_string()), "{}", written);
                prop_assert_eq!(policy.check_url(&url).is_ok(), expected, "{}", written);
            }
        }

        #[test]
        fn an_explicit_deny_always_wins(ip in any_ip(), port in any::<u16>(), by_name in any::<bool>()) {
            let deny = Rule { target: Target::Net(Cidr::host(ip)), port: None, written: ip.to_string() };
            let allow = rules(&["0.0.0.0/0", "::/0"]);
            let policy = EgressPolicy::new(allow, vec![deny], &api_on_loopback());
            let port = (!by_name).then_some(port);
            prop_assert!(policy.check(by_name.then_some("h"), ip, port).is_err());
        }

        #[test]
        fn link_local_is_refused_unless_allowed(low in any::<u16>(), port in any::<u16>()) {
            let ip = IpAddr::V4(Ipv4Addr::from_bits(0xa9fe_0000 | u32::from(low)));
            let closed = EgressPolicy::new(Vec::new(), Vec::new(), &Builtins::default());
            prop_assert!(closed.check(None, ip, Some(port)).is_err());
            let url = Url::parse(&format!("http://{ip}:{port}/")).unwrap();
            prop_assert!(closed.check_url(&url).is_err());
            let open = EgressPolicy::new(rules(&["169.254.0.0/16"]), Vec::new(), &Builtins::default());
            prop_assert!(open.check(None, ip, Some(port)).is_ok());
        }

        #[test]
        fn the_api_server_is_refused_whatever_is_allowed(allow in prop::collection::vec(any_ip(), 0..4), prefix in 0u8..=32) {
            let mut rules: Vec<Rule> = allow.iter().map(|ip| Rule { target: Target::Net(Cidr::host(*ip)), port: None, written: ip.to_string() }).collect();
            rules.push(Rule { target: Target::Net(Cidr::new(ip("127.0.0.1"), prefix).unwrap()), port: None, written: "net".into() });
            let policy = EgressPolicy::new(rules, Vec::new(), &api_on_loopback());
            prop_assert!(policy.check(None, ip("127.0.0.1"), Some(6443)).is_err());
            prop_assert!(policy.check(Some("kubernetes"), ip("127.0.0.1"), None).is_err());
        }
    }
}
