//! Every sample in `config/samples/` parses into the typed API and passes `validate()`.

use std::path::PathBuf;

use wirekube_crds::{WireKubeMesh, validate_mesh};

#[test]
fn samples_parse_and_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/samples exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("mesh-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mesh: WireKubeMesh = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} does not parse as a WireKubeMesh: {e}"));
        if let Err(problems) = validate_mesh(&mesh.spec) {
            panic!("{name} fails validate(): {problems:?}");
        }
        seen += 1;
    }
    assert!(seen >= 4, "expected the four sample meshes, found {seen}");
}

#[test]
fn unknown_enum_values_are_rejected_with_the_field() {
    let text = "apiVersion: wirekube.io/v1alpha1\nkind: WireKubeMesh\nmetadata: {name: x}\nspec:\n  relay:\n    mode: sometimes\n";
    let err = serde_yaml::from_str::<WireKubeMesh>(text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sometimes") && err.contains("never"), "{err}");
}
