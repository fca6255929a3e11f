//! What the catalog shows of products and contracts beyond their tables:
//! owners, status, tags, service levels, whom to ask for access, and the
//! lineage between products their input ports declare.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::odcs::{ContractTeam, DataContract, SlaProperty};
use crate::odps::DataProduct;

/// A product as discovery shows it (`meta.products`, lineage).
#[derive(Debug, Clone, PartialEq)]
pub struct ProductInfo {
    /// ODPS `id`.
    pub id: String,
    /// ODPS `name`.
    pub name: Option<String>,
    /// The domain, which is also the SQL schema of its tables.
    pub domain: String,
    /// ODPS `version`.
    pub version: Option<String>,
    /// ODPS `status` (`active`, `draft`, `deprecated`, …).
    pub status: String,
    /// ODPS `description.purpose`.
    pub description: Option<String>,
    /// ODPS `team.name`.
    pub owner_team: Option<String>,
    /// Usernames of the team members whose role is `owner`.
    pub owner_contacts: Vec<String>,
    /// ODPS `tags`.
    pub tags: Vec<String>,
    /// Input ports: (port name, contract id).
    pub inputs: Vec<(String, String)>,
    /// Contract ids of its output ports.
    pub outputs: Vec<String>,
    /// The descriptor file.
    pub file: PathBuf,
}

impl ProductInfo {
    /// The discovery view of an ODPS descriptor read from `file`.
    pub fn from_odps(p: &DataProduct, file: &Path) -> Self {
        let owner_contacts = p
            .team
            .iter()
            .flat_map(|t| t.members.iter())
            .filter(|m| {
                m.role
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case("owner"))
            })
            .map(|m| m.username.clone())
            .collect();
        Self {
            id: p.id.clone(),
            name: p.name.clone(),
            domain: p.domain.clone().unwrap_or_default(),
            version: p.version.clone(),
            status: p.status.clone(),
            description: p.description.as_ref().and_then(|d| d.purpose.clone()),
            owner_team: p.team.as_ref().and_then(|t| t.name.clone()),
            owner_contacts,
            tags: p.tags.clone(),
            inputs: p
                .input_ports
                .iter()
                .map(|i| (i.name.clone(), i.contract_id.clone()))
                .collect(),
            outputs: p
                .output_ports
                .iter()
                .filter_map(|o| o.contract_id.clone())
                .collect(),
            file: file.to_path_buf(),
        }
    }
}

/// A contract as discovery shows it: version, service levels and approvers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractInfo {
    /// ODCS `id`.
    pub id: String,
    /// ODCS `version`.
    pub version: String,
    /// The contract file.
    pub file: PathBuf,
    /// Most time the data may lag: `slaProperties` `latency`, else
    /// `frequency`, in seconds.
    pub freshness_sla_secs: Option<i64>,
    /// `slaProperties` `availability`, in percent.
    pub availability_sla: Option<f64>,
    /// ODCS `roles[]`: (role, first- and second-level approvers).
    pub roles: Vec<(String, Vec<String>)>,
    /// Usernames of the contract team (ODCS `team`), for when no role names
    /// an approver.
    pub team: Vec<String>,
}

impl ContractInfo {
    /// The discovery view of an ODCS contract read from `file`.
    pub fn from_odcs(c: &DataContract, file: &Path) -> Self {
        let sla = |name: &str| {
            c.sla_properties
                .iter()
                .find(|p| p.property.eq_ignore_ascii_case(name))
        };
        let roles = c
            .roles
            .iter()
            .map(|r| {
                let approvers = [&r.first_level_approvers, &r.second_level_approvers]
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a.split(','))
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
                    .collect();
                (r.role.clone(), approvers)
            })
            .collect();
        let team = match &c.team {
            Some(ContractTeam::Team(t)) => t.members.iter().map(|m| m.username.clone()).collect(),
            Some(ContractTeam::Members(m)) => m.iter().map(|m| m.username.clone()).collect(),
            None => Vec::new(),
        };
        Self {
            id: c.id.clone(),
            version: c.version.clone(),
            file: file.to_path_buf(),
            freshness_sla_secs: sla("latency")
                .or_else(|| sla("freshness"))
                .or_else(|| sla("frequency"))
                .and_then(sla_seconds),
            availability_sla: sla("availability").and_then(sla_percent),
            roles,
            team,
        }
    }

    /// Whom to ask for one of `roles`: the approvers of the contract roles
    /// among them, else of every contract role, else the contract team.
    pub fn approvers_for(&self, roles: &[String]) -> Vec<String> {
        let pick = |only: bool| -> Vec<String> {
            let mut out: Vec<String> = self
                .roles
                .iter()
                .filter(|(r, _)| !only || roles.contains(r))
                .flat_map(|(_, a)| a.iter().cloned())
                .collect();
            out.sort();
            out.dedup();
            out
        };
        let matching = pick(true);
        if !matching.is_empty() {
            return matching;
        }
        let any = pick(false);
        if !any.is_empty() {
            return any;
        }
        self.team.clone()
    }
}

/// Seconds of an SLA duration: `value` with `unit` (ODCS uses `d`, `y`;
/// also accepted: s, m/min, h, w and spelled-out names), or a string such
/// as `4h`.
pub fn sla_seconds(p: &SlaProperty) -> Option<i64> {
    let (amount, unit) = match &p.value {
        serde_yaml_ng::Value::Number(n) => (n.as_f64()?, p.unit.clone().unwrap_or_default()),
        serde_yaml_ng::Value::String(s) => {
            let s = s.trim();
            let cut = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let unit = if cut < s.len() {
                s[cut..].trim().to_string()
            } else {
                p.unit.clone().unwrap_or_default()
            };
            (s[..cut].parse().ok()?, unit)
        }
        _ => return None,
    };
    let per = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "wk" | "week" | "weeks" => 604_800.0,
        "y" | "yr" | "year" | "years" => 31_536_000.0,
        _ => return None,
    };
    (amount >= 0.0).then(|| (amount * per).round() as i64)
}

fn sla_percent(p: &SlaProperty) -> Option<f64> {
    match &p.value {
        serde_yaml_ng::Value::Number(n) => n.as_f64(),
        serde_yaml_ng::Value::String(s) => s.trim().trim_end_matches('%').trim().parse().ok(),
        _ => None,
    }
}

/// One edge of the product graph: `to_product` reads `from_product`
/// through the input port `via` (the contract both name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineageEdge {
    /// The product whose output port has the contract.
    pub from_product: String,
    /// The product whose input port names it.
    pub to_product: String,
    /// `port-name (contract-id)`.
    pub via: String,
    /// The descriptor declaring the input port.
    pub declared_in: PathBuf,
}

/// The edges declared by the products' input ports, each resolved to the
/// product whose output port carries that contract. An input port whose
/// contract no product publishes has no edge.
pub fn lineage(products: &[Arc<ProductInfo>]) -> Vec<LineageEdge> {
    let mut publisher: BTreeMap<&str, &str> = BTreeMap::new();
    for p in products {
        for c in &p.outputs {
            publisher.entry(c.as_str()).or_insert(p.id.as_str());
        }
    }
    let mut edges: Vec<LineageEdge> = products
        .iter()
        .flat_map(|p| {
            let publisher = &publisher;
            p.inputs.iter().filter_map(move |(port, contract)| {
                let from = publisher.get(contract.as_str())?;
                Some(LineageEdge {
                    from_product: from.to_string(),
                    to_product: p.id.clone(),
                    via: format!("{port} ({contract})"),
                    declared_in: p.file.clone(),
                })
            })
        })
        .collect();
    edges.sort();
    edges.dedup();
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sla(value: &str, unit: Option<&str>) -> SlaProperty {
        serde_yaml_ng::from_str(&format!(
            "{{ property: latency, value: {value}{} }}",
            unit.map(|u| format!(", unit: {u}")).unwrap_or_default()
        ))
        .unwrap()
    }

    #[test]
    fn sla_durations_in_every_spelling() {
        assert_eq!(sla_seconds(&sla("4", Some("d"))), Some(4 * 86_400));
        assert_eq!(sla_seconds(&sla("1", Some("y"))), Some(31_536_000));
        assert_eq!(sla_seconds(&sla("90", Some("minutes"))), Some(5_400));
        assert_eq!(sla_seconds(&sla("'4h'", None)), Some(14_400));
        assert_eq!(sla_seconds(&sla("1.5", Some("h"))), Some(5_400));
        assert_eq!(sla_seconds(&sla("4", Some("fortnights"))), None);
        assert_eq!(sla_seconds(&sla("4", None)), None);
        assert_eq!(sla_seconds(&sla("-1", Some("d"))), None);
    }

    #[test]
    fn lineage_resolves_input_contracts_to_their_publishers() {
        let product = |id: &str, inputs: &[&str], outputs: &[&str]| {
            Arc::new(ProductInfo {
                id: id.into(),
                name: None,
                domain: "d".into(),
                version: None,
                status: "active".into(),
                description: None,
                owner_team: None,
                owner_contacts: vec![],
                tags: vec![],
                inputs: inputs
                    .iter()
                    .map(|c| (format!("in-{c}"), c.to_string()))
                    .collect(),
                outputs: outputs.iter().map(|c| c.to_string()).collect(),
                file: PathBuf::from(format!("{id}.odps.yaml")),
            })
        };
        let products = vec![
            product("orders", &[], &["c-orders"]),
            product("payments", &["c-orders", "c-nobody"], &["c-payments"]),
            product("finance", &["c-payments", "c-orders"], &[]),
        ];
        let edges: Vec<(String, String)> = lineage(&products)
            .into_iter()
            .map(|e| (e.from_product, e.to_product))
            .collect();
        assert_eq!(
            edges,
            vec![
                ("orders".into(), "finance".into()),
                ("orders".into(), "payments".into()),
                ("payments".into(), "finance".into()),
            ]
        );
    }
}
