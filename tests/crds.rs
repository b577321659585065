//! The checked-in CRDs must be exactly what the Rust types generate.

use bosun::crdgen::{crds, to_yaml};

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, crd) in crds() {
        let generated = to_yaml(&crd).expect("CRD serializes");
        let checked_in = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            checked_in == generated,
            "crds/{file} is stale: run `cargo run -- crds` and commit the result"
        );
    }
}

#[test]
fn app_deployment_crd_has_status_short_names_and_columns() {
    let (_, crd) = crds()
        .into_iter()
        .find(|(file, _)| *file == "appdeployments.yaml")
        .unwrap();
    let names = crd.spec.names.short_names.clone().unwrap_or_default();
    assert!(
        names.contains(&"ad".to_string()) && names.contains(&"appdeploy".to_string()),
        "{names:?}"
    );
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<String> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["Phase", "Current", "Last Healthy", "Age"]);
}
