//! Data-mesh product manifests (`apiVersion: datamesh/v1`, `kind:
//! DataProduct`) as an ODPS 1.0 product and one ODCS 3.1 contract per
//! output.

use serde_yaml_ng::{Mapping, Value};

use super::Imported;
use super::common::{
    Notes, duration, full, get_bool, get_list, get_map, get_strings, get_text, join, key_text,
    num_value, number, server_for_location, short, slug, text,
};
use super::model::{
    Contract, Description, InputPort, Map, OutputPort, Product, Property, SchemaObject, Team,
    strings,
};
use super::rules::{Compare, expectation, library, text_rule};

/// Converts one manifest.
pub(crate) fn convert(
    doc: &Mapping,
    domain: Option<&str>,
    notes: &mut Notes,
) -> Result<Imported, String> {
    let api = get_text(doc, "apiVersion").unwrap_or_default();
    if !api.starts_with("datamesh/") {
        return Err(format!(
            "not a data-mesh manifest: `apiVersion` is `{api}`, not `datamesh/v1`"
        ));
    }
    if get_text(doc, "kind").as_deref() != Some("DataProduct") {
        return Err("not a data-mesh product manifest: `kind` is not `DataProduct`".into());
    }
    notes.unknown_keys("", doc, &["apiVersion", "kind", "metadata", "spec"]);
    let metadata = get_map(doc, "metadata").ok_or("the manifest has no `metadata`")?;
    let empty = Mapping::new();
    let spec = get_map(doc, "spec").unwrap_or(&empty);
    notes.unknown_keys(
        "metadata",
        metadata,
        &[
            "name",
            "domain",
            "owner",
            "team",
            "version",
            "description",
            "tags",
            "status",
            "labels",
            "annotations",
        ],
    );
    notes.unknown_keys(
        "spec",
        spec,
        &[
            "description",
            "purpose",
            "usage",
            "limitations",
            "status",
            "outputs",
            "output_ports",
            "outputPorts",
            "inputs",
            "input_ports",
            "sla",
            "quality",
            "quality_checks",
            "lineage",
            "access_control",
            "tags",
        ],
    );
    let name = get_text(metadata, "name").ok_or("the manifest has no `metadata.name`")?;
    let domain = match domain {
        Some(d) => d.to_string(),
        None => get_text(metadata, "domain")
            .map(|d| slug(&d))
            .ok_or_else(|| format!("`{name}` has no `metadata.domain`; give --domain"))?,
    };
    let product_slug = slug(&name);
    let version = get_text(metadata, "version").unwrap_or_else(|| {
        notes.changed("metadata.version", "missing; 1.0.0 assumed");
        "1.0.0".into()
    });
    let status = get_text(spec, "status")
        .or_else(|| get_text(metadata, "status"))
        .unwrap_or_else(|| "active".into());
    let team = team_of(metadata, &domain, notes);
    let description = Description {
        purpose: get_text(spec, "purpose")
            .or_else(|| get_text(spec, "description"))
            .or_else(|| get_text(metadata, "description")),
        usage: get_text(spec, "usage"),
        limitations: get_text(spec, "limitations"),
        custom: Vec::new(),
    };
    let mut tags = get_strings(metadata, "tags");
    tags.extend(get_strings(spec, "tags"));
    for key in ["labels", "annotations"] {
        if let Some(m) = get_map(metadata, key) {
            for (k, v) in m {
                if let Some(v) = text(v) {
                    tags.push(format!("{}:{v}", key_text(k)));
                }
            }
            notes.changed(join("metadata", key), "kept as `key:value` tags");
        }
    }

    // Outputs.
    let (outputs_key, outputs) = ["outputs", "output_ports", "outputPorts"]
        .iter()
        .find_map(|k| get_list(spec, k).map(|l| (*k, l)))
        .ok_or("the manifest has no `spec.outputs` (or `spec.output_ports`)")?;
    let access = get_map(spec, "access_control");
    let pii_columns = access
        .map(|a| get_strings(a, "pii_columns"))
        .unwrap_or_default();
    let read_roles: Vec<String> = access
        .map(|a| {
            ["read_roles", "allowed_roles", "readers", "roles"]
                .iter()
                .flat_map(|k| get_strings(a, k))
                .collect()
        })
        .unwrap_or_default();
    if let Some(a) = access {
        notes.unknown_keys(
            "spec.access_control",
            a,
            &[
                "pii_columns",
                "read_roles",
                "allowed_roles",
                "readers",
                "roles",
            ],
        );
        if !read_roles.is_empty() {
            notes.changed(
                "spec.access_control",
                format!(
                    "the roles {} became each table's `readRoles`: only they may read it",
                    read_roles.join(", ")
                ),
            );
        }
    }
    let mut contracts: Vec<(String, Contract)> = Vec::new();
    let mut ports = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        let path = format!("spec.{outputs_key}[{i}]");
        let Some(o) = o.as_mapping() else {
            notes.dropped(&path, "an output must be a mapping");
            continue;
        };
        notes.unknown_keys(
            &path,
            o,
            &[
                "name",
                "description",
                "type",
                "location",
                "format",
                "schema",
                "version",
                "partition_by",
                "partitioned_by",
            ],
        );
        let Some(output) = get_text(o, "name") else {
            notes.dropped(&path, "an output without `name`");
            continue;
        };
        let table = slug(&output);
        let contract_id = format!("urn:datacontract:{domain}:{table}");
        let mut object = SchemaObject {
            name: table.clone(),
            physical_type: get_text(o, "type"),
            description: get_text(o, "description"),
            read_roles: read_roles.clone(),
            ..Default::default()
        };
        let fields = match o.get("schema") {
            Some(Value::Mapping(s)) => get_list(s, "fields").cloned().unwrap_or_default(),
            Some(Value::Sequence(l)) => l.clone(),
            _ => Vec::new(),
        };
        if fields.is_empty() {
            notes.dropped(
                join(&path, "schema"),
                "no fields: the contract has no columns, and meshq serves none of the table",
            );
        }
        for (j, f) in fields.iter().enumerate() {
            let fpath = format!("{path}.schema.fields[{j}]");
            let Some(f) = f.as_mapping() else {
                notes.dropped(&fpath, "a field must be a mapping");
                continue;
            };
            if let Some(p) = field_property(f, &pii_columns, &fpath, notes) {
                object.properties.push(p);
            }
        }
        for c in &pii_columns {
            if !object.properties.iter().any(|p| &p.name == c) && outputs.len() == 1 {
                notes.dropped(
                    "spec.access_control.pii_columns",
                    format!("`{c}` is not a field of `{output}`"),
                );
            }
        }
        let partitions: Vec<String> = ["partition_by", "partitioned_by"]
            .iter()
            .flat_map(|k| get_strings(o, k))
            .collect();
        if !partitions.is_empty() {
            notes.changed(join(&path, "partition_by"), "partitioning is the table's own (meshq reads it from the files); not declared in the contract");
        }
        let mut contract = Contract {
            id: contract_id.clone(),
            name: table.clone(),
            version: get_text(o, "version").unwrap_or_else(|| version.clone()),
            status: status.clone(),
            domain: domain.clone(),
            description: Description {
                purpose: get_text(o, "description").or_else(|| description.purpose.clone()),
                ..Default::default()
            },
            tags: tags.clone(),
            team: team.clone(),
            schema: vec![object],
            ..Default::default()
        };
        match get_text(o, "location") {
            Some(location) => match server_for_location(&table, &location, get_text(o, "format").as_deref()) {
                Ok(server) => contract.servers.push(server.into()),
                Err(why) => notes.dropped(join(&path, "location"), why),
            },
            None => notes.dropped(&path, "no `location`: the contract has no server, and meshq serves no table for it until one is added"),
        }
        ports.push(OutputPort {
            name: table.clone(),
            description: get_text(o, "description"),
            version: contract.version.clone(),
            contract_id,
            server: None,
        });
        contracts.push((table, contract));
    }
    if contracts.is_empty() {
        return Err("no output could be converted".into());
    }

    // Service levels apply to every output.
    if let Some(sla) = get_map(spec, "sla") {
        let entries = sla_entries(sla, notes);
        if contracts.len() > 1 && !entries.is_empty() {
            notes.changed(
                "spec.sla",
                "the product's service levels are declared on each output's contract",
            );
        }
        for (_, c) in &mut contracts {
            c.sla.extend(entries.iter().cloned());
        }
    }

    // Quality rules, on the output they name (else the first).
    let mut items: Vec<(String, Mapping)> = Vec::new();
    match spec.get("quality") {
        Some(Value::Mapping(q)) => {
            notes.unknown_keys(
                "spec.quality",
                q,
                &["expectations", "checks", "quality_checks", "rules"],
            );
            for key in ["expectations", "checks", "quality_checks", "rules"] {
                for (i, item) in get_list(q, key).into_iter().flatten().enumerate() {
                    push_item(&mut items, item, format!("spec.quality.{key}[{i}]"), notes);
                }
            }
        }
        Some(Value::Sequence(l)) => {
            for (i, item) in l.iter().enumerate() {
                push_item(&mut items, item, format!("spec.quality[{i}]"), notes);
            }
        }
        Some(other) => notes.dropped(
            "spec.quality",
            format!("neither a list nor a mapping: {}", short(other)),
        ),
        None => {}
    }
    for (i, item) in get_list(spec, "quality_checks")
        .into_iter()
        .flatten()
        .enumerate()
    {
        push_item(&mut items, item, format!("spec.quality_checks[{i}]"), notes);
    }
    for (path, item) in items {
        let target = ["table", "output", "dataset", "port"]
            .iter()
            .find_map(|k| get_text(&item, k))
            .map(|t| slug(&t));
        // Unnamed: the one output with the check's column, else the first.
        let column = item
            .get("kwargs")
            .and_then(Value::as_mapping)
            .unwrap_or(&item)
            .get("column")
            .and_then(text);
        let by_column = column.as_ref().and_then(|c| {
            let with: Vec<usize> = contracts
                .iter()
                .enumerate()
                .filter(|(_, (_, k))| k.schema[0].properties.iter().any(|p| &p.name == c))
                .map(|(i, _)| i)
                .collect();
            (with.len() == 1).then(|| with[0])
        });
        let index = match (&target, by_column) {
            (Some(t), _) => contracts.iter().position(|(n, _)| n == t),
            (None, Some(i)) => Some(i),
            (None, None) => Some(0),
        };
        let Some(index) = index else {
            notes.dropped(
                &path,
                format!(
                    "names output `{}`, which the manifest does not have",
                    target.unwrap_or_default()
                ),
            );
            continue;
        };
        if target.is_none() && by_column.is_none() && contracts.len() > 1 {
            notes.changed(
                &path,
                format!("names no output; put on the first, `{}`", contracts[0].0),
            );
        }
        let object = &mut contracts[index].1.schema[0];
        let kind = ["expectation_type", "expectation", "type", "check", "rule"]
            .iter()
            .find_map(|k| get_text(&item, k))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if kind.contains("freshness") {
            let limit = ["threshold", "max_age", "max_delay", "value"]
                .iter()
                .find_map(|k| get_text(&item, k));
            match limit.as_deref().and_then(duration) {
                Some((value, unit)) => {
                    let element = get_text(&item, "column").map(|c| format!("{}.{c}", object.name));
                    let c = &mut contracts[index].1;
                    if c.sla.iter().any(|s| s["property"] == "freshness") {
                        notes.changed(
                            &path,
                            "a freshness check beside `spec.sla.freshness`: the SLA is kept",
                        );
                    } else {
                        c.sla.push(
                            Map::new()
                                .set("property", "freshness")
                                .set("value", value)
                                .set("unit", unit)
                                .opt("element", element)
                                .into(),
                        );
                        notes.changed(
                            &path,
                            "became the contract's `freshness` SLA, which meshq checks like a rule",
                        );
                    }
                }
                None => {
                    notes.text_rule(&path, "a freshness check without a duration meshq can read");
                    object.quality.push(text_rule(
                        None,
                        &format!("Expectation: {}", full(&Value::Mapping(item.clone()))),
                    ));
                }
            }
            continue;
        }
        expectation(object, &item, &path, notes);
    }

    // Lineage: upstream products become input ports.
    let mut inputs = Vec::new();
    let mut upstream: Vec<(String, Value)> = Vec::new();
    if let Some(lineage) = get_map(spec, "lineage") {
        notes.unknown_keys("spec.lineage", lineage, &["upstream", "downstream"]);
        for (i, u) in get_list(lineage, "upstream")
            .into_iter()
            .flatten()
            .enumerate()
        {
            upstream.push((format!("spec.lineage.upstream[{i}]"), u.clone()));
        }
        if lineage.contains_key("downstream") {
            notes.dropped(
                "spec.lineage.downstream",
                "consumers declare their inputs in ODPS; meshq draws downstream lineage from their input ports",
            );
        }
    }
    for key in ["inputs", "input_ports"] {
        for (i, u) in get_list(spec, key).into_iter().flatten().enumerate() {
            upstream.push((format!("spec.{key}[{i}]"), u.clone()));
        }
    }
    for (path, u) in upstream {
        match input_port(&u) {
            Some(port) => {
                notes.changed(
                    &path,
                    format!("input `{}` reads the contract `{}` (the id meshq's imports give a table `domain.table`)", port.name, port.contract_id),
                );
                inputs.push(port);
            }
            None => notes.dropped(&path, format!("an upstream meshq cannot name ({}); write it as `domain.table`, a contract id, or {{ domain, name }}", short(&u))),
        }
    }

    let product = Product {
        id: format!("urn:dataproduct:{domain}:{product_slug}"),
        name,
        version,
        status,
        domain,
        description,
        tags,
        team,
        inputs,
        outputs: ports,
        custom: Vec::new(),
    };
    Ok(Imported { product, contracts })
}

fn push_item(items: &mut Vec<(String, Mapping)>, item: &Value, path: String, notes: &mut Notes) {
    match item {
        Value::Mapping(m) => items.push((path, m.clone())),
        Value::String(s) => items.push((
            path,
            Mapping::from_iter([(
                Value::String("expectation".into()),
                Value::String(s.clone()),
            )]),
        )),
        other => notes.dropped(
            path,
            format!("a quality check must be a mapping, not {}", short(other)),
        ),
    }
}

/// The owner: an email becomes the owner member, anything else the team's
/// name.
fn team_of(metadata: &Mapping, domain: &str, notes: &mut Notes) -> Team {
    let mut team = Team {
        name: get_text(metadata, "team"),
        members: Vec::new(),
    };
    match metadata.get("owner") {
        Some(Value::Mapping(o)) => {
            notes.unknown_keys("metadata.owner", o, &["team", "name", "email"]);
            team.name = team.name.or_else(|| get_text(o, "team"));
            if let Some(email) = get_text(o, "email") {
                team.members
                    .push((email, get_text(o, "name"), "owner".into()));
            }
        }
        Some(v) => {
            if let Some(owner) = text(v) {
                if owner.contains('@') {
                    team.members.push((owner, None, "owner".into()));
                } else {
                    team.name = team.name.or(Some(owner));
                }
            }
        }
        None => {}
    }
    if team.name.is_none() {
        team.name = Some(format!("{domain}-team"));
        notes.changed("metadata", format!("no team name; `{domain}-team` assumed"));
    }
    team
}

/// An upstream as an input port: `domain.table`, a contract id, or a
/// mapping naming the domain and output.
fn input_port(u: &Value) -> Option<InputPort> {
    let (domain, name, version) = match u {
        Value::String(s) if s.starts_with("urn:datacontract:") => {
            let name = s.rsplit(':').next()?.to_string();
            return Some(InputPort {
                name,
                version: "1.0.0".into(),
                contract_id: s.clone(),
            });
        }
        Value::String(s) if s.starts_with("urn:dataproduct:") => {
            let parts: Vec<&str> = s.split(':').collect();
            let [_, _, d, n] = parts.as_slice() else {
                return None;
            };
            (d.to_string(), n.to_string(), None)
        }
        Value::String(s) => {
            let (d, n) = s.split_once('.')?;
            (d.to_string(), n.to_string(), None)
        }
        Value::Mapping(m) => {
            let d = get_text(m, "domain")?;
            let n = ["output", "port", "table", "name", "product"]
                .iter()
                .find_map(|k| get_text(m, k))?;
            (d, n, get_text(m, "version"))
        }
        _ => return None,
    };
    let (domain, name) = (slug(&domain), slug(&name));
    if domain.is_empty() || name.is_empty() {
        return None;
    }
    Some(InputPort {
        contract_id: format!("urn:datacontract:{domain}:{name}"),
        name,
        version: version.unwrap_or_else(|| "1.0.0".into()),
    })
}

/// A manifest field as an ODCS property.
fn field_property(
    f: &Mapping,
    pii_columns: &[String],
    path: &str,
    notes: &mut Notes,
) -> Option<Property> {
    notes.unknown_keys(
        path,
        f,
        &[
            "name",
            "type",
            "description",
            "pii",
            "classification",
            "nullable",
            "required",
            "unique",
            "primary_key",
            "primaryKey",
            "tags",
            "enum",
            "allowed_values",
            "pattern",
            "format",
            "min",
            "max",
            "minimum",
            "maximum",
            "min_length",
            "max_length",
            "precision",
            "scale",
            "example",
            "examples",
        ],
    );
    let Some(name) = get_text(f, "name") else {
        notes.dropped(path, "a field without `name`");
        return None;
    };
    let (logical, physical) = super::common::field_types(f, path, notes);
    let required = get_bool(f, "required")
        .or_else(|| get_bool(f, "nullable").map(|n| !n))
        .unwrap_or(false);
    let mut p = Property {
        name: name.clone(),
        logical_type: logical,
        physical_type: physical,
        description: get_text(f, "description"),
        required,
        unique: get_bool(f, "unique").unwrap_or(false),
        primary_key_position: (get_bool(f, "primary_key") == Some(true)
            || get_bool(f, "primaryKey") == Some(true))
        .then_some(1),
        classification: get_text(f, "classification"),
        tags: get_strings(f, "tags"),
        ..Default::default()
    };
    let pii = get_bool(f, "pii") == Some(true) || pii_columns.contains(&name);
    super::dcs::pii(&mut p, pii, path, notes);
    let mut options = Map::new();
    let string = logical == Some("string");
    let numeric = matches!(logical, Some("integer" | "number"));
    for (source, key, applies) in [
        ("pattern", "pattern", string),
        ("format", "format", string),
        ("min_length", "minLength", string),
        ("max_length", "maxLength", string),
        ("min", "minimum", numeric),
        ("minimum", "minimum", numeric),
        ("max", "maximum", numeric),
        ("maximum", "maximum", numeric),
    ] {
        let Some(v) = f.get(source) else { continue };
        if !applies {
            notes.dropped(
                join(path, source),
                format!(
                    "`{source}` does not apply to a {} field in ODCS",
                    logical.unwrap_or("untyped")
                ),
            );
            continue;
        }
        let value = match v {
            Value::String(s) => s
                .parse::<f64>()
                .map(num_value)
                .unwrap_or(Value::String(s.clone())),
            other => other.clone(),
        };
        options = options.set(key, value);
    }
    p.options = options;
    let values: Vec<String> = ["enum", "allowed_values"]
        .iter()
        .flat_map(|k| get_strings(f, k))
        .collect();
    if !values.is_empty() {
        p.quality.push(library(
            Some(&format!("{name}_allowed_values")),
            "invalidValues",
            Map::new().set("validValues", strings(&values)),
            &Compare::equals_zero(),
            Some("conformity"),
        ));
    }
    p.examples = super::common::examples(f);
    Some(p)
}

/// `spec.sla` as `slaProperties`.
fn sla_entries(sla: &Mapping, notes: &mut Notes) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, v) in sla {
        let key = key_text(k);
        let path = join("spec.sla", &key);
        // `freshness: 1h`, or `freshness: { threshold: 1h, column: ts }`.
        let (value_text, element, description) = match v {
            Value::Mapping(m) => (
                ["threshold", "value", "max_age", "target"]
                    .iter()
                    .find_map(|k| get_text(m, k)),
                ["column", "field", "timestamp_field", "element"]
                    .iter()
                    .find_map(|k| get_text(m, k)),
                get_text(m, "description"),
            ),
            v => (text(v), None, None),
        };
        let entry = Map::new()
            .set("property", key.as_str())
            .opt("description", description);
        match key.as_str() {
            "freshness" | "latency" | "retention" => match value_text.as_deref().and_then(duration)
            {
                Some((value, unit)) => out.push(
                    entry
                        .set("value", value)
                        .set("unit", unit)
                        .opt("element", element)
                        .into(),
                ),
                None => notes.dropped(
                    &path,
                    format!(
                        "`{}` is not a duration meshq reads (e.g. 1h, 24 hours)",
                        value_text.unwrap_or_default()
                    ),
                ),
            },
            "availability" => match value_text
                .as_deref()
                .map(Value::from)
                .as_ref()
                .and_then(number)
            {
                Some(p) => out.push(
                    entry
                        .set("value", num_value(p))
                        .set("unit", "percent")
                        .into(),
                ),
                None => notes.dropped(&path, "availability must be a percentage"),
            },
            "frequency" | "support" | "support_hours" | "response_time" => {
                out.push(entry.opt("value", value_text).into());
                notes.changed(
                    &path,
                    format!("kept as the `{key}` SLA; meshq shows it and does not check it"),
                );
            }
            other => notes.dropped(
                &path,
                format!("service level `{other}` has no ODCS counterpart"),
            ),
        }
    }
    out
}
