//! The committed CRD YAML must be exactly what the Rust types generate.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd");
    for (name, yaml) in wirekube_crds::crdgen::render().expect("render CRDs") {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} differs from the Rust types; run `cargo run -p wirekube-crds --bin crdgen` (or `make manifests`) and commit the result",
            path.display()
        );
    }
}
