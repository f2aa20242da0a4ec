//! `crds/` is the committed output of `omninode-operator crd`, and the schemas are structural.

use omninode_operator::api;
use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let files = api::crd_files().expect("CRDs serialise");
    for (name, yaml) in &files {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!("crds/{name} is missing ({e}); run `omninode-operator crd --output-dir crds`")
        });
        assert_eq!(
            &committed, yaml,
            "crds/{name} is stale; run `omninode-operator crd --output-dir crds`"
        );
    }
    let committed: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(
        committed.len(),
        files.len(),
        "crds/ holds files the types do not produce"
    );
}

#[test]
fn crd_command_prints_the_same_stream() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omninode-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        api::crds_yaml().unwrap()
    );
}

/// Every schema node has a type, except where unknown fields or int-or-string are deliberate.
fn assert_structural(path: &str, schema: &Value) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    let deliberate = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    assert!(
        obj.contains_key("type") || deliberate,
        "{path}: schema node without a type"
    );
    for key in ["anyOf", "oneOf", "allOf", "$ref", "not"] {
        if key == "anyOf" && obj.get("x-kubernetes-int-or-string").is_some() {
            continue;
        }
        assert!(
            !obj.contains_key(key),
            "{path}: {key} makes the schema non-structural"
        );
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        assert_structural(&format!("{path}{{}}"), ap);
    }
}

#[test]
fn schemas_are_structural_with_list_map_conditions_and_cel() {
    for crd in api::crds() {
        let json = serde_json::to_value(&crd).unwrap();
        for version in json["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            assert_structural(crd.metadata.name.as_deref().unwrap(), schema);
            let conditions = &schema["properties"]["status"]["properties"]["conditions"];
            assert_eq!(conditions["x-kubernetes-list-type"], "map");
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"])
            );
            assert!(version["subresources"]["status"].is_object());
        }
    }
    let ng = serde_json::to_value(api::crds()[0].clone()).unwrap();
    let rules = &ng["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"];
    assert_eq!(rules[0]["rule"], "has(self.prd) != has(self.prdFrom)");
    let names = &ng["spec"]["names"];
    assert_eq!(names["shortNames"], serde_json::json!(["ng"]));
    assert_eq!(names["categories"], serde_json::json!(["omninode"]));
}
