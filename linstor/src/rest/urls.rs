//! The URL list every host's nbd-http-server needs: one
//! `http://<address>:<port>` per node holding a replica of the volume, the
//! address taken from the node's LINSTOR net interfaces.

use std::net::IpAddr;

use super::client::{encode, Client, LinstorError};
use super::provision::get_resources;
use super::types::Node;

/// Which replicas count and which address of a node to use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSelection {
    /// Net interface name to take the address from; default: the active
    /// (satellite) interface, else the one named `default`, else the first.
    pub net_interface: Option<String>,
    /// Tie-breakers are diskless voters LINSTOR adds and removes on its own;
    /// no http-disk-server is installed for them unless asked.
    pub include_tie_breakers: bool,
    /// Leave out every diskless replica (only diskful hosts serve).
    pub diskful_only: bool,
}

/// A host that may run the volume's http-disk-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHost {
    pub node: String,
    pub address: String,
    pub diskless: bool,
    pub tie_breaker: bool,
}

impl ReplicaHost {
    /// `http://<address>:<port>`, IPv6 literals in brackets.
    pub fn url(&self, port: u16) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("http://[{}]:{port}", self.address),
            _ => format!("http://{}:{port}", self.address),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UrlListError {
    #[error(transparent)]
    Linstor(#[from] LinstorError),
    #[error("volume {volume} has no replicas in LINSTOR; run `provision` for it first")]
    NoReplicas { volume: String },
    #[error("volume {volume}: node {node} (replica) is not known to LINSTOR's node list")]
    UnknownNode { volume: String, node: String },
    #[error("volume {volume}: node {node} has no net interface{}; its interfaces: {available}",
        .wanted.as_ref().map(|w| format!(" named `{w}`")).unwrap_or_default())]
    NoAddress {
        volume: String,
        node: String,
        wanted: Option<String>,
        available: String,
    },
}

fn pick_address(node: &Node, sel: &HostSelection) -> Option<String> {
    let nics = &node.net_interfaces;
    let nic = match &sel.net_interface {
        Some(name) => nics.iter().find(|n| n.name.eq_ignore_ascii_case(name)),
        None => nics
            .iter()
            .find(|n| n.is_active == Some(true))
            .or_else(|| nics.iter().find(|n| n.name.eq_ignore_ascii_case("default")))
            .or_else(|| nics.first()),
    };
    nic.map(|n| n.address.clone())
}

/// Nodes holding replicas of `volume` (after `sel`), sorted by node name.
pub fn replica_hosts(
    client: &Client,
    volume: &str,
    sel: &HostSelection,
) -> Result<Vec<ReplicaHost>, UrlListError> {
    let resources = get_resources(client, volume)?;
    if resources.is_empty() {
        return Err(UrlListError::NoReplicas {
            volume: volume.to_string(),
        });
    }
    let wanted: Vec<_> = resources
        .iter()
        .filter(|r| sel.include_tie_breakers || !r.is_tie_breaker())
        .filter(|r| !sel.diskful_only || !r.is_diskless())
        .collect();
    let query: Vec<String> = wanted
        .iter()
        .map(|r| format!("nodes={}", encode(&r.node_name)))
        .collect();
    let nodes: Vec<Node> = if query.is_empty() {
        Vec::new()
    } else {
        client.get(&format!("/v1/nodes?{}", query.join("&")))?
    };
    let mut hosts = Vec::new();
    for r in wanted {
        let node = nodes
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(&r.node_name))
            .ok_or_else(|| UrlListError::UnknownNode {
                volume: volume.to_string(),
                node: r.node_name.clone(),
            })?;
        let address = pick_address(node, sel).ok_or_else(|| UrlListError::NoAddress {
            volume: volume.to_string(),
            node: node.name.clone(),
            wanted: sel.net_interface.clone(),
            available: node
                .net_interfaces
                .iter()
                .map(|n| format!("{}={}", n.name, n.address))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        hosts.push(ReplicaHost {
            node: r.node_name.clone(),
            address,
            diskless: r.is_diskless(),
            tie_breaker: r.is_tie_breaker(),
        });
    }
    hosts.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(hosts)
}

/// The comma-separated list for `nbd-http-server --urls`.
pub fn url_list(hosts: &[ReplicaHost], port: u16) -> String {
    hosts
        .iter()
        .map(|h| h.url(port))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_in_brackets() {
        let h = |a: &str| ReplicaHost {
            node: "n".into(),
            address: a.into(),
            diskless: false,
            tie_breaker: false,
        };
        assert_eq!(h("10.0.0.1").url(8076), "http://10.0.0.1:8076");
        assert_eq!(h("fd00::1").url(8076), "http://[fd00::1]:8076");
        assert_eq!(h("host-a").url(8077), "http://host-a:8077");
        assert_eq!(
            url_list(&[h("10.0.0.1"), h("10.0.0.2")], 8076),
            "http://10.0.0.1:8076,http://10.0.0.2:8076"
        );
    }
}
