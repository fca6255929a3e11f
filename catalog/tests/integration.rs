//! Integration tests of the catalog: the reference examples parse, and every
//! kind of bad input yields the exact problem text.

use std::path::Path;

use meshq_catalog::odcs::DataContract;
use meshq_catalog::odps::DataProduct;
use meshq_catalog::platform::PlatformConfig;
use meshq_catalog::policy::{MaskSpec, PolicySet};
use meshq_catalog::{Format, Location, load_mesh, yaml};

fn data(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

#[test]
fn reference_examples_parse() {
    let c: DataContract = yaml::parse(&data("orders.odcs.yaml")).unwrap();
    assert_eq!(c.id, "urn:datacontract:sales:orders");
    assert_eq!(c.schema[0].properties.len(), 6);
    let p: DataProduct = yaml::parse(&data("orders.odps.yaml")).unwrap();
    assert_eq!(p.output_ports[0].server_name(), Some("production"));
    let cfg: PlatformConfig = yaml::parse(&data("meshq.yaml")).unwrap();
    assert_eq!(cfg.principals.len(), 4);
    let set: PolicySet = yaml::parse(&data("pii.policy.yaml")).unwrap();
    assert!(matches!(set.policies[0].mask, MaskSpec::Hash { .. }));
}

#[test]
fn reference_mesh_resolves_s3_delta_table_with_policies() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["meshq.yaml", "orders.odps.yaml", "orders.odcs.yaml"] {
        std::fs::write(dir.path().join(f), data(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("governance")).unwrap();
    std::fs::write(
        dir.path().join("governance/pii.policy.yaml"),
        data("pii.policy.yaml"),
    )
    .unwrap();
    let out = load_mesh(dir.path()).unwrap();
    // The reference config's password hashes are placeholders ("..."): each
    // is reported, and nothing else is wrong.
    let errors: Vec<_> = out
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| (p.file.display().to_string(), p.line))
        .collect();
    assert_eq!(
        errors,
        vec![
            ("meshq.yaml".to_string(), Some(21)),
            ("meshq.yaml".to_string(), Some(25)),
            ("meshq.yaml".to_string(), Some(28)),
            ("meshq.yaml".to_string(), Some(31)),
        ]
    );
    let t = out.mesh.table("sales", "orders").unwrap();
    assert_eq!(t.source.format, Format::Delta);
    assert_eq!(
        t.source.location,
        Location::Url("s3://acme-sales/products/orders/v2/".parse().unwrap())
    );
    assert_eq!(t.primary_key(), vec!["order_id"]);
    assert_eq!(t.policy.row_filters[0].id, "own_region");
    assert!(t.columns[1].mask.is_some());
    assert_eq!(out.mesh.policy_sets.len(), 1);
}
