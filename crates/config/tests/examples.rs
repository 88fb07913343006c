//! Every config under `examples/` loads, and so does the embedded quickstart.

use std::path::PathBuf;

use tidegate_config::{load_file, load_str, quickstart, RouteAction, QUICKSTART};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_config_loads() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|e| e.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 4,
        "expected the quickstart and the deployment examples, found {paths:?}"
    );
    let mut failures = Vec::new();
    for path in &paths {
        match load_file(path) {
            Ok(config) => assert_eq!(config.source.as_deref(), Some(path.as_path())),
            Err(errors) => failures.push(errors.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn quickstart_loads_and_serves_a_welcome_page_and_healthz() {
    let config = quickstart();
    assert_eq!(config.source, None);
    assert_eq!(
        config,
        load_str(QUICKSTART, None).expect("quickstart is valid")
    );
    let web = &config.listeners[0];
    assert_eq!(web.listen[0].to_string(), "127.0.0.1:8080");
    let healthz = web
        .routes
        .iter()
        .find(|r| r.path == "/healthz")
        .expect("a /healthz route");
    assert_eq!(
        healthz.action,
        RouteAction::Respond {
            status: 200,
            body: "ok\n".into()
        }
    );
}
