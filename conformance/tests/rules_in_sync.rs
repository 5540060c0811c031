//! `rules.tsv` must list exactly the rule IDs of `../shared/spec/RULES.md`, and every one of them
//! must get a status in the matrix.

#[test]
fn rules_tsv_matches_the_catalog() {
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/RULES.md");
    let Ok(text) = std::fs::read_to_string(&catalog) else {
        eprintln!("skipped: {} not present", catalog.display());
        return;
    };
    let mut from_catalog: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter(|id| id.contains('-') && id.chars().last().is_some_and(|c| c.is_ascii_digit()))
        .filter(|id| id.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'))
        .map(str::to_owned)
        .collect();
    from_catalog.sort();
    from_catalog.dedup();
    let mut listed: Vec<String> = include_str!("../rules.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, from_catalog);
    assert_eq!(listed.len(), 255);
}

/// Every rule of `rules.tsv` gets a status other than `untested` from the registry, the JSON
/// scenarios and the core list alone (nothing runs), and every ID they name is in the catalog.
#[test]
fn every_rule_has_a_status_without_running_anything() {
    use tcpudp_conformance::matrix::{self, Status};
    let entries = matrix::entries().expect("the scenarios load");
    let ids = matrix::rule_ids();
    assert_eq!(ids.len(), 255);
    for entry in &entries {
        for rule in &entry.rules {
            assert!(
                ids.contains(&rule.as_str()),
                "{} names {rule}, which rules.tsv does not list",
                entry.name
            );
        }
    }
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "two scenarios with one name");
    let planned = matrix::planned(&entries);
    let untested: Vec<_> = planned.iter().filter(|(_, s)| s.contains(&Status::Untested)).collect();
    assert!(untested.is_empty(), "rules with no scenario and not in scenarios::CORE: {untested:?}");
    assert_eq!(planned.len(), ids.len());
}

/// Each `core` rule is really named by a test of `tcpudp-core` (`core/tests/`, or a source file
/// after its `#[cfg(test)]`), and has no scenario that could show it instead.
#[test]
fn core_rules_are_named_by_core_tests() {
    use tcpudp_conformance::{matrix, scenarios};
    let core = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core");
    let mut named = String::new();
    for dir in ["src", "tests"] {
        for entry in std::fs::read_dir(core.join(dir)).expect("core/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a core source file");
            let tested = match (dir, text.find("#[cfg(test)]")) {
                ("tests", _) => &text[..],
                (_, Some(at)) => &text[at..],
                (_, None) => "",
            };
            for line in tested.lines().filter_map(|l| l.trim().strip_prefix("// rule:")) {
                named.push_str(line);
                named.push(',');
            }
        }
    }
    let named: Vec<&str> = named.split(',').map(str::trim).collect();
    let entries = matrix::entries().expect("the scenarios load");
    for (rule, why) in scenarios::CORE {
        assert!(!why.is_empty());
        assert!(named.contains(rule), "{rule} is shown as core but no core test names it");
        let scenario = entries.iter().find(|e| e.rules.iter().any(|r| r == rule));
        assert!(
            scenario.is_none(),
            "{rule} has a scenario ({}): not a core-only rule",
            scenario.map_or("", |e| &e.name)
        );
    }
}
