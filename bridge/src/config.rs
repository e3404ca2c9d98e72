//! Zenoh configurations for bridges and remote callers: peer mode on explicit endpoints, TLS and
//! mutual TLS. Anything else Zenoh can do is one [`zenoh::Config::insert_json5`] away, or a
//! configuration file ([`from_file`]).

use crate::{Error, Result};
use zenoh::Config;

/// A peer-mode configuration that listens on `listen` and connects to `connect` (endpoints
/// such as `tcp/127.0.0.1:7447` or `tls/host:7447`), with multicast scouting and gossip off:
/// the session talks to exactly the endpoints named (and to what connects to it). A
/// `connect` endpoint that is not up yet is retried in the background (Zenoh's default for
/// peers), so a bridge and its callers may start in any order.
pub fn peer(listen: &[&str], connect: &[&str]) -> Result<Config> {
    let mut c = Config::default();
    set(&mut c, "mode", r#""peer""#)?;
    set(&mut c, "scouting/multicast/enabled", "false")?;
    set(&mut c, "scouting/gossip/enabled", "false")?;
    set(&mut c, "listen/endpoints", &json_list(listen))?;
    set(&mut c, "connect/endpoints", &json_list(connect))?;
    // Re-dial a lost or not-yet-listening peer quickly (Zenoh's default starts at 1 s).
    set(
        &mut c,
        "connect/retry",
        "{period_init_ms: 100, period_max_ms: 1000, period_increase_factor: 2}",
    )?;
    Ok(c)
}

/// The files of a TLS setup (PEM): the certificate authority that signs the peers'
/// certificates, and this peer's own certificate and private key.
#[derive(Clone, Debug)]
pub struct TlsFiles<'a> {
    /// The CA certificate every peer's certificate must chain to.
    pub root_ca: &'a str,
    /// This peer's certificate.
    pub certificate: &'a str,
    /// This peer's private key.
    pub private_key: &'a str,
}

/// Adds TLS to `config` (for `tls/...` endpoints): this peer presents `files`' certificate when
/// it listens and when it connects, and checks the other side's against the CA. With `mutual`,
/// a listener also requires and checks the connecting peer's certificate (mutual TLS). Names
/// are verified on connect (the endpoint's host must be in the listener's certificate).
pub fn tls(config: &mut Config, files: &TlsFiles<'_>, mutual: bool) -> Result<()> {
    let q = |path: &str| format!("{path:?}");
    set(
        config,
        "transport/link/tls/root_ca_certificate",
        &q(files.root_ca),
    )?;
    set(
        config,
        "transport/link/tls/listen_certificate",
        &q(files.certificate),
    )?;
    set(
        config,
        "transport/link/tls/listen_private_key",
        &q(files.private_key),
    )?;
    set(
        config,
        "transport/link/tls/connect_certificate",
        &q(files.certificate),
    )?;
    set(
        config,
        "transport/link/tls/connect_private_key",
        &q(files.private_key),
    )?;
    set(
        config,
        "transport/link/tls/enable_mtls",
        if mutual { "true" } else { "false" },
    )?;
    set(config, "transport/link/tls/verify_name_on_connect", "true")
}

/// A configuration read from a Zenoh configuration file (JSON5 or YAML).
pub fn from_file(path: &str) -> Result<Config> {
    Config::from_file(path).map_err(|e| {
        Error::InvalidConfig(format!("cannot read the Zenoh configuration {path:?}: {e}"))
    })
}

fn set(c: &mut Config, key: &str, value: &str) -> Result<()> {
    c.insert_json5(key, value)
        .map_err(|e| Error::InvalidConfig(format!("zenoh setting {key} = {value}: {e}")))
}

fn json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_configuration_names_its_endpoints_and_bad_endpoints_are_refused() {
        let c = peer(&["tcp/127.0.0.1:7447"], &["tcp/127.0.0.1:7448"]).unwrap();
        let text = format!("{c}");
        assert!(text.contains("tcp/127.0.0.1:7447"), "{text}");
        assert!(text.contains("tcp/127.0.0.1:7448"), "{text}");
        assert!(matches!(
            peer(&["not an endpoint"], &[]),
            Err(Error::InvalidConfig(_))
        ));
    }
}
