//! spin.toml against the code: every component maps exactly the variables it reads (Spin has no
//! inheritance of application variables, so a missing mapping reads as unset and an extra one is
//! a knob that does nothing), every application variable is used, and a default lives in one
//! place: the code's, with spin.toml declaring the variable empty.

use std::collections::BTreeSet;

fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(chatedge_tests::repo_root().join("spin.toml")).expect("spin.toml");
    text.parse().expect("spin.toml parses")
}

fn components() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("conversations", conversations::variables()),
        ("chat-completion", chat_completion::variables()),
        ("rate-limit", rate_limit::variables()),
        ("file-upload", file_upload::variables()),
        ("code-execution", code_execution::variables()),
        ("health", Vec::new()),
        ("api-docs", Vec::new()),
        ("playground", Vec::new()),
    ]
}

/// The application variables a mapping or an `allowed_outbound_hosts` template names.
fn templated(value: &str) -> Vec<String> {
    value.split("{{").skip(1).filter_map(|rest| rest.split_once("}}")).map(|(name, _)| name.trim().to_owned()).collect()
}

#[test]
fn every_component_maps_exactly_the_variables_it_reads() {
    let manifest = manifest();
    let declared = manifest["component"].as_table().expect("[component]");
    assert_eq!(
        declared.keys().cloned().collect::<BTreeSet<_>>(),
        components().iter().map(|(name, _)| (*name).to_owned()).collect(),
        "every component has its list here"
    );
    for (name, reads) in components() {
        let mapped: BTreeSet<String> = declared[name]
            .get("variables")
            .and_then(|v| v.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let reads: BTreeSet<String> = reads.into_iter().collect();
        let missing: Vec<_> = reads.difference(&mapped).collect();
        let unused: Vec<_> = mapped.difference(&reads).collect();
        assert!(
            missing.is_empty() && unused.is_empty(),
            "{name}: not mapped {missing:?}, mapped but not read {unused:?}"
        );
        // Each mapping passes the application variable of the same name through.
        for (key, value) in declared[name].get("variables").and_then(|v| v.as_table()).into_iter().flatten() {
            assert_eq!(value.as_str(), Some(format!("{{{{ {key} }}}}").as_str()), "{name}.{key}");
        }
    }
}

#[test]
fn every_application_variable_is_used_and_defaults_live_in_the_code() {
    let manifest = manifest();
    let variables = manifest["variables"].as_table().expect("[variables]");
    let mut used = BTreeSet::new();
    let mut read_by_code = BTreeSet::new();
    for (name, reads) in components() {
        read_by_code.extend(reads);
        let component = &manifest["component"][name];
        for host in component.get("allowed_outbound_hosts").and_then(|v| v.as_array()).into_iter().flatten() {
            used.extend(templated(host.as_str().unwrap_or_default()));
        }
        for value in component.get("variables").and_then(|v| v.as_table()).into_iter().flatten().map(|(_, v)| v) {
            used.extend(templated(value.as_str().unwrap_or_default()));
        }
    }
    let unused: Vec<_> = variables.keys().filter(|k| !used.contains(*k)).collect();
    assert!(unused.is_empty(), "application variables no component uses: {unused:?}");
    for name in &read_by_code {
        let declaration = &variables[name];
        let default = declaration.get("default").and_then(|d| d.as_str());
        let required = declaration.get("required").and_then(|r| r.as_bool()) == Some(true);
        assert!(
            required || default == Some(""),
            "{name}: the code holds its default, so spin.toml declares it `default = \"\"` (found {declaration})"
        );
    }
}
