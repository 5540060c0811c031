//! `rules.tsv` must list exactly the rule IDs of `../shared/spec/RULES.md`.

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
