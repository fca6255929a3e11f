//! The Data Contract Specification 0.9.3 (`dataContractSpecification:
//! 0.9.3`) as an ODCS 3.1 contract and an ODPS 1.0 product with one output
//! port serving it.

use serde_yaml_ng::{Mapping, Value};

use super::Imported;
use super::common::{
    Notes, duration, full, get_bool, get_list, get_map, get_strings, get_text, join, key_text,
    num_value, number, server_for_location, short, slug, text,
};
use super::model::{
    Contract, Description, Map, OutputPort, Product, Property, SchemaObject, Team, strings,
};
use super::rules::{Compare, library, soda_checks, text_rule};

/// Converts one DCS document.
pub(crate) fn convert(
    doc: &Mapping,
    domain: Option<&str>,
    notes: &mut Notes,
) -> Result<Imported, String> {
    let spec = get_text(doc, "dataContractSpecification")
        .ok_or("not a Data Contract Specification document: no `dataContractSpecification`")?;
    if !spec.starts_with("0.9") {
        notes.changed(
            "dataContractSpecification",
            format!("version {spec}; read as 0.9.3"),
        );
    }
    notes.unknown_keys(
        "",
        doc,
        &[
            "dataContractSpecification",
            "id",
            "info",
            "servers",
            "terms",
            "models",
            "definitions",
            "servicelevels",
            "quality",
            "tags",
            "links",
            "examples",
        ],
    );
    let id = get_text(doc, "id").ok_or("the contract has no `id`")?;
    let info = get_map(doc, "info").ok_or("the contract has no `info`")?;
    notes.unknown_keys(
        "info",
        info,
        &[
            "title",
            "version",
            "description",
            "owner",
            "contact",
            "status",
        ],
    );
    let title = get_text(info, "title").unwrap_or_else(|| id.clone());
    let version = get_text(info, "version").unwrap_or_else(|| {
        notes.changed("info.version", "missing; 1.0.0 assumed");
        "1.0.0".into()
    });
    let domain = match domain {
        Some(d) => d.to_string(),
        None => domain_of(&id, info).ok_or_else(|| {
            format!("cannot tell the domain of `{id}` (its id is not `urn:datacontract:DOMAIN:NAME` and it has no `info.owner`); give --domain")
        })?,
    };
    let name = id
        .rsplit(':')
        .next()
        .map(slug)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| slug(&title));
    let mut team = Team {
        name: get_text(info, "owner"),
        members: Vec::new(),
    };
    if let Some(contact) = get_map(info, "contact") {
        notes.unknown_keys("info.contact", contact, &["name", "email", "url"]);
        match get_text(contact, "email") {
            Some(email) => team
                .members
                .push((email, get_text(contact, "name"), "owner".into())),
            None => {
                if contact.contains_key("name") || contact.contains_key("url") {
                    notes.dropped(
                        "info.contact",
                        "a contact without `email` cannot be a team member (ODPS/ODCS members are usernames)",
                    );
                }
            }
        }
        if let Some(url) = get_text(contact, "url") {
            notes.dropped(
                "info.contact.url",
                format!("the contact URL `{url}` has no place in an ODCS team"),
            );
        }
    }
    let mut description = Description {
        purpose: get_text(info, "description"),
        ..Default::default()
    };
    if let Some(terms) = get_map(doc, "terms") {
        notes.unknown_keys(
            "terms",
            terms,
            &["usage", "limitations", "billing", "noticePeriod"],
        );
        description.usage = get_text(terms, "usage");
        description.limitations = get_text(terms, "limitations");
        for key in ["billing", "noticePeriod"] {
            if let Some(v) = get_text(terms, key) {
                description.custom.push(super::model::custom(key, v));
                notes.changed(
                    join("terms", key),
                    "kept in the contract's `description.customProperties`",
                );
            }
        }
    }

    // Models, with $refs to `definitions` resolved.
    let definitions = get_map(doc, "definitions").cloned().unwrap_or_default();
    let models = get_map(doc, "models").ok_or("the contract has no `models`")?;
    let mut schema = Vec::new();
    let mut enums: Vec<(String, String, Vec<String>)> = Vec::new();
    for (k, v) in models {
        let model = key_text(k);
        let path = join("models", &model);
        let Some(m) = v.as_mapping() else {
            notes.dropped(&path, "a model must be a mapping");
            continue;
        };
        notes.unknown_keys(
            &path,
            m,
            &[
                "description",
                "type",
                "fields",
                "title",
                "tags",
                "primaryKey",
                "quality",
            ],
        );
        let mut object = SchemaObject {
            name: model.clone(),
            physical_name: None,
            physical_type: get_text(m, "type"),
            description: get_text(m, "description").or_else(|| get_text(m, "title")),
            tags: get_strings(m, "tags"),
            ..Default::default()
        };
        let key_columns = get_strings(m, "primaryKey");
        if let Some(fields) = get_map(m, "fields") {
            for (fk, fv) in fields {
                let field = key_text(fk);
                let fpath = join(&join(&path, "fields"), &field);
                let Some(f) = fv.as_mapping() else {
                    notes.dropped(&fpath, "a field must be a mapping");
                    continue;
                };
                let f = resolve_ref(f, &definitions, &fpath, notes);
                let (property, values) = field_property(&field, &f, &fpath, notes);
                if let Some(values) = values {
                    enums.push((model.clone(), field.clone(), values));
                }
                object.properties.push(property);
            }
        }
        let mut position = object
            .properties
            .iter()
            .filter_map(|p| p.primary_key_position)
            .max()
            .unwrap_or(0);
        for c in key_columns {
            if let Some(p) = object.property_mut(&c)
                && p.primary_key_position.is_none()
            {
                position += 1;
                p.primary_key_position = Some(position);
            }
        }
        if m.contains_key("quality") {
            notes.text_rule(
                join(&path, "quality"),
                "model-level quality (a later DCS version) is kept as text; 0.9.3 declares quality at the top",
            );
            object.quality.push(text_rule(
                None,
                &format!("DCS model quality: {}", full(&m["quality"])),
            ));
        }
        schema.push(object);
    }
    // Field enums as rules: every value outside the list is invalid.
    for (model, field, values) in &enums {
        if let Some(p) = schema
            .iter_mut()
            .find(|o| &o.name == model)
            .and_then(|o| o.property_mut(field))
        {
            p.quality.push(library(
                Some(&format!("{field}_enum")),
                "invalidValues",
                Map::new().set("validValues", strings(values)),
                &Compare::equals_zero(),
                Some("conformity"),
            ));
        }
    }

    let mut contract = Contract {
        id: id.clone(),
        name: title.clone(),
        version: version.clone(),
        status: get_text(info, "status").unwrap_or_else(|| "active".into()),
        domain: domain.clone(),
        description: description.clone(),
        tags: get_strings(doc, "tags"),
        team: team.clone(),
        schema,
        ..Default::default()
    };

    // Servers.
    let mut server_names = Vec::new();
    if let Some(servers) = get_map(doc, "servers") {
        for (k, v) in servers {
            let server = key_text(k);
            let path = join("servers", &server);
            let Some(s) = v.as_mapping() else {
                notes.dropped(&path, "a server must be a mapping");
                continue;
            };
            if let Some(entry) = server_entry(&server, s, &contract.schema, &path, notes) {
                contract.servers.push(entry.into());
                server_names.push(server);
            }
        }
    }
    if server_names.is_empty() {
        notes.dropped(
            "servers",
            "no server meshq can read: the product is listed with its contract but serves no table until one is added",
        );
    }

    // Service levels.
    if let Some(levels) = get_map(doc, "servicelevels") {
        contract.sla = service_levels(levels, notes);
    }

    // SodaCL quality.
    if let Some(quality) = get_map(doc, "quality") {
        let kind = get_text(quality, "type").unwrap_or_default();
        notes.unknown_keys("quality", quality, &["type", "specification"]);
        if kind.eq_ignore_ascii_case("sodacl") {
            let spec = quality.get("specification");
            let spec: Option<Mapping> = match spec {
                Some(Value::Mapping(m)) => Some(m.clone()),
                // Inline SodaCL as a YAML string.
                Some(Value::String(s)) => serde_yaml_ng::from_str(s).ok(),
                _ => None,
            };
            match spec {
                Some(spec) => {
                    for (k, v) in &spec {
                        let key = key_text(k);
                        let path = join("quality.specification", &key);
                        let Some(table) = key.strip_prefix("checks for ").map(str::trim) else {
                            notes.dropped(&path, "not a `checks for TABLE` section");
                            continue;
                        };
                        let Some(checks) = v.as_sequence() else {
                            notes.dropped(&path, "the checks must be a list");
                            continue;
                        };
                        let enums_of = |c: &str| {
                            enums
                                .iter()
                                .find(|(m, f, _)| m == table && f == c)
                                .map(|(_, _, v)| v.clone())
                        };
                        let Some(object) = contract.object_mut(table) else {
                            notes.dropped(
                                &path,
                                format!("`{table}` is not a model of this contract"),
                            );
                            continue;
                        };
                        let out = soda_checks(object, checks, &enums_of, &path, notes);
                        for sla in out.sla {
                            let exists = contract.sla.iter().any(|s| s["property"] == "freshness");
                            if exists {
                                notes.changed(
                                    &path,
                                    "a freshness check beside `servicelevels.freshness`: the service level is kept",
                                );
                            } else {
                                contract.sla.push(sla);
                            }
                        }
                    }
                }
                None => notes.dropped(
                    "quality.specification",
                    "SodaCL specification is neither a mapping nor YAML text",
                ),
            }
        } else {
            notes.text_rule(
                "quality",
                format!("quality of type `{kind}` is kept as text on every model: meshq runs ODCS rules and SodaCL converted to them"),
            );
            for o in &mut contract.schema {
                o.quality.push(text_rule(
                    None,
                    &format!("{kind}: {}", full(&Value::Mapping(quality.clone()))),
                ));
            }
        }
    }

    if let Some(links) = get_map(doc, "links") {
        for (k, v) in links {
            if let Some(url) = text(v) {
                contract
                    .links
                    .push(Map::new().set("type", key_text(k)).set("url", url).into());
            }
        }
    }
    if doc.contains_key("examples") {
        notes.dropped(
            "examples",
            "example rows are not part of an ODCS 3.1 contract",
        );
    }

    let product = Product {
        id: format!("urn:dataproduct:{domain}:{name}"),
        name: title,
        version: version.clone(),
        status: contract.status.clone(),
        domain: domain.clone(),
        description,
        tags: contract.tags.clone(),
        team,
        inputs: Vec::new(),
        outputs: vec![OutputPort {
            name: name.clone(),
            description: None,
            version,
            contract_id: id,
            server: (server_names.len() > 1).then(|| server_names[0].clone()),
        }],
        custom: Vec::new(),
    };
    if server_names.len() > 1 {
        notes.changed(
            "servers",
            format!("several servers: the output port serves `{}` (its `server` custom property picks another)", server_names[0]),
        );
    }
    Ok(Imported {
        product,
        contracts: vec![(name, contract)],
    })
}

/// The domain of a contract: `urn:datacontract:DOMAIN:NAME` (or
/// `DOMAIN:NAME`), else its owner.
fn domain_of(id: &str, info: &Mapping) -> Option<String> {
    let parts: Vec<&str> = id.split(':').collect();
    let from_id = match parts.as_slice() {
        ["urn", _, d, _, ..] => Some(*d),
        [d, _] => Some(*d),
        _ => None,
    }
    .map(slug)
    .filter(|d| !d.is_empty());
    from_id.or_else(|| {
        get_text(info, "owner")
            .map(|o| slug(&o))
            .filter(|d| !d.is_empty())
    })
}

/// A field with `$ref: '#/definitions/NAME'` merged (the field's own keys
/// win).
fn resolve_ref(f: &Mapping, definitions: &Mapping, path: &str, notes: &mut Notes) -> Mapping {
    let Some(reference) = get_text(f, "$ref") else {
        return f.clone();
    };
    let Some(name) = reference.strip_prefix("#/definitions/") else {
        notes.dropped(
            join(path, "$ref"),
            format!("only local references (`#/definitions/NAME`) are followed, not `{reference}`"),
        );
        return f.clone();
    };
    let Some(def) = get_map(definitions, name) else {
        notes.dropped(join(path, "$ref"), format!("`{reference}` is not defined"));
        return f.clone();
    };
    let mut merged = def.clone();
    // A definition's `name` and `domain` describe the definition.
    merged.remove("name");
    merged.remove("domain");
    for (k, v) in f {
        if key_text(k) != "$ref" {
            merged.insert(k.clone(), v.clone());
        }
    }
    merged
}

/// A DCS field as an ODCS property, and its `enum` values.
fn field_property(
    name: &str,
    f: &Mapping,
    path: &str,
    notes: &mut Notes,
) -> (Property, Option<Vec<String>>) {
    notes.unknown_keys(
        path,
        f,
        &[
            "type",
            "description",
            "title",
            "required",
            "unique",
            "primary",
            "primaryKey",
            "pii",
            "classification",
            "enum",
            "pattern",
            "format",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "tags",
            "precision",
            "scale",
            "example",
            "examples",
            "$ref",
            "references",
            "fields",
            "items",
            "config",
        ],
    );
    let (logical, physical) = super::common::field_types(f, path, notes);
    let mut p = Property {
        name: name.to_string(),
        business_name: get_text(f, "title"),
        logical_type: logical,
        physical_type: physical,
        description: get_text(f, "description"),
        required: get_bool(f, "required").unwrap_or(false),
        unique: get_bool(f, "unique").unwrap_or(false),
        primary_key_position: (get_bool(f, "primary") == Some(true)
            || get_bool(f, "primaryKey") == Some(true))
        .then_some(1),
        classification: get_text(f, "classification"),
        tags: get_strings(f, "tags"),
        ..Default::default()
    };
    pii(&mut p, get_bool(f, "pii") == Some(true), path, notes);
    // Constraints meshq checks from the schema.
    let string_keys: &[&str] = &["pattern", "format", "minLength", "maxLength"];
    let number_keys: &[&str] = &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
    for key in string_keys.iter().chain(number_keys) {
        let Some(v) = f.get(*key) else { continue };
        let fits = match logical {
            Some("string") => string_keys.contains(key),
            Some("integer" | "number") => number_keys.contains(key) || *key == "format",
            Some("date" | "timestamp" | "time") => number_keys.contains(key) || *key == "format",
            _ => false,
        };
        if !fits {
            notes.dropped(
                join(path, key),
                format!(
                    "`{key}` does not apply to a {} field in ODCS",
                    logical.unwrap_or("untyped")
                ),
            );
            continue;
        }
        let value = match (logical, v) {
            // Bounds of dates and times are ISO strings in ODCS.
            (Some("date" | "timestamp" | "time"), v) => Value::String(text(v).unwrap_or_default()),
            (_, Value::String(s)) if number_keys.contains(key) || key.ends_with("Length") => s
                .parse::<f64>()
                .map(num_value)
                .unwrap_or(Value::String(s.clone())),
            (_, v) => v.clone(),
        };
        p.options = std::mem::take(&mut p.options).set(key, value);
    }
    p.examples = super::common::examples(f);
    for key in ["references", "fields", "items", "config"] {
        if let Some(v) = f.get(key) {
            notes.dropped(join(path, key), format!("`{key}` ({}) is not converted: meshq serves flat columns and checks no references", short(v)));
        }
    }
    let enums = get_list(f, "enum").map(|items| items.iter().filter_map(text).collect());
    (p, enums)
}

/// A column marked PII (`pii: true`, a manifest's `pii_columns`) is
/// classified `pii` (global PII policies
/// mask it); another classification is kept as a tag.
pub(crate) fn pii(p: &mut Property, pii: bool, path: &str, notes: &mut Notes) {
    if !pii {
        return;
    }
    match p.classification.take() {
        Some(c) if c.eq_ignore_ascii_case("pii") => {}
        Some(c) => {
            notes.changed(
                path,
                format!("marked PII, so its classification is `pii` (masked by global PII policies); the classification `{c}` is kept as a tag"),
            );
            if !p.tags.contains(&c) {
                p.tags.push(c);
            }
        }
        None => {}
    }
    p.classification = Some("pii".into());
    if !p.tags.iter().any(|t| t == "pii") {
        p.tags.push("pii".into());
    }
}

/// A DCS server as an ODCS server entry (`{model}` in a location filled in
/// with the one model), or `None` with a note.
fn server_entry(
    name: &str,
    s: &Mapping,
    schema: &[SchemaObject],
    path: &str,
    notes: &mut Notes,
) -> Option<Map> {
    let kind = get_text(s, "type").unwrap_or_default().to_ascii_lowercase();
    let format = get_text(s, "format");
    let entry = match kind.as_str() {
        "s3" | "gcs" | "azure" | "local" => {
            notes.unknown_keys(
                path,
                s,
                &[
                    "type",
                    "location",
                    "path",
                    "format",
                    "delimiter",
                    "endpointUrl",
                    "description",
                    "environment",
                ],
            );
            let Some(mut location) = get_text(s, "location").or_else(|| get_text(s, "path")) else {
                notes.dropped(path, format!("a {kind} server without `location`"));
                return None;
            };
            if location.contains("{model}") {
                if schema.len() == 1 {
                    location = location.replace("{model}", &schema[0].name);
                    notes.changed(
                        join(path, "location"),
                        format!("`{{model}}` filled in: `{location}`"),
                    );
                } else {
                    notes.dropped(path, "a location with `{model}` over several models: meshq serves one table per location; write one contract per model");
                    return None;
                }
            }
            match server_for_location(name, &location, format.as_deref()) {
                Ok(e) => e
                    .opt("delimiter", get_text(s, "delimiter"))
                    .opt("endpointUrl", get_text(s, "endpointUrl"))
                    .opt("description", get_text(s, "description"))
                    .opt("environment", get_text(s, "environment")),
                Err(why) => {
                    notes.dropped(path, why);
                    return None;
                }
            }
        }
        "postgres" | "postgresql" => {
            notes.unknown_keys(
                path,
                s,
                &[
                    "type",
                    "host",
                    "port",
                    "database",
                    "schema",
                    "description",
                    "environment",
                ],
            );
            let port = s.get("port").and_then(number).map(num_value);
            Map::new()
                .set("server", name)
                .set("type", "postgresql")
                .opt("host", get_text(s, "host"))
                .opt("port", port)
                .opt("database", get_text(s, "database"))
                .opt("schema", get_text(s, "schema"))
                .opt("description", get_text(s, "description"))
                .opt("environment", get_text(s, "environment"))
        }
        other => {
            notes.dropped(
                path,
                format!("a `{other}` server is not a source meshq reads (files on local disk, S3, GCS, Azure; PostgreSQL; Flight SQL)"),
            );
            return None;
        }
    };
    Some(entry)
}

/// `servicelevels` as `slaProperties`.
fn service_levels(levels: &Mapping, notes: &mut Notes) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, v) in levels {
        let key = key_text(k);
        let path = join("servicelevels", &key);
        let Some(m) = v.as_mapping() else {
            notes.dropped(&path, "a service level must be a mapping");
            continue;
        };
        let description = get_text(m, "description");
        let sla = |property: &str| {
            Map::new()
                .set("property", property)
                .opt("description", description.clone())
        };
        match key.as_str() {
            "availability" => {
                notes.unknown_keys(&path, m, &["description", "percentage"]);
                match m.get("percentage").and_then(number) {
                    Some(p) => out.push(
                        sla("availability")
                            .set("value", num_value(p))
                            .set("unit", "percent")
                            .into(),
                    ),
                    None => out.push(sla("availability").into()),
                }
            }
            "retention" => {
                notes.unknown_keys(
                    &path,
                    m,
                    &["description", "period", "unlimited", "timestampField"],
                );
                let entry = if get_bool(m, "unlimited") == Some(true) {
                    sla("retention").set("value", "unlimited")
                } else if let Some((value, unit)) = get_text(m, "period").and_then(|p| duration(&p))
                {
                    sla("retention").set("value", value).set("unit", unit)
                } else {
                    sla("retention").opt("value", get_text(m, "period"))
                };
                out.push(entry.opt("element", get_text(m, "timestampField")).into());
            }
            "freshness" | "latency" => {
                notes.unknown_keys(
                    &path,
                    m,
                    &[
                        "description",
                        "threshold",
                        "timestampField",
                        "sourceTimestampField",
                        "processedTimestampField",
                    ],
                );
                let element = get_text(m, "timestampField")
                    .or_else(|| get_text(m, "processedTimestampField"));
                match get_text(m, "threshold").and_then(|t| duration(&t)) {
                    Some((value, unit)) => out.push(
                        sla(&key)
                            .set("value", value)
                            .set("unit", unit)
                            .opt("element", element)
                            .into(),
                    ),
                    None => notes.dropped(
                        &path,
                        "no `threshold` meshq can read as a duration (e.g. 25h)",
                    ),
                }
                if get_text(m, "sourceTimestampField").is_some() {
                    notes.dropped(
                        join(&path, "sourceTimestampField"),
                        "ODCS has one element per SLA: the processed timestamp is kept",
                    );
                }
            }
            "frequency" => {
                notes.unknown_keys(&path, m, &["description", "type", "interval", "cron"]);
                let interval = get_text(m, "interval");
                let every =
                    interval
                        .as_deref()
                        .and_then(|i| match i.to_ascii_lowercase().as_str() {
                            "hourly" => Some((Value::Number(1.into()), "h")),
                            "daily" => Some((Value::Number(1.into()), "d")),
                            "weekly" => Some((Value::Number(1.into()), "w")),
                            "yearly" | "annually" => Some((Value::Number(1.into()), "y")),
                            other => duration(other),
                        });
                let entry = match every {
                    Some((value, unit)) => sla("frequency").set("value", value).set("unit", unit),
                    None => {
                        if let Some(i) = &interval {
                            notes.changed(&path, format!("interval `{i}` is not a duration meshq reads; kept as text, so meshq does not check it"));
                        }
                        sla("frequency").opt("value", interval.or_else(|| get_text(m, "type")))
                    }
                };
                let entry = match get_text(m, "cron") {
                    Some(cron) => entry.set("scheduler", "cron").set("schedule", cron),
                    None => entry,
                };
                out.push(entry.into());
            }
            "support" | "backup" => {
                let value = ["time", "interval", "responseTime", "cron"]
                    .iter()
                    .find_map(|k| get_text(m, k));
                out.push(sla(&key).opt("value", value).into());
                notes.changed(&path, format!("kept as the `{key}` SLA with its description; ODCS has no fields for its details"));
            }
            other => notes.dropped(
                &path,
                format!("service level `{other}` has no ODCS counterpart"),
            ),
        }
    }
    out
}
