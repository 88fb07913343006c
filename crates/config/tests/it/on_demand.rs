//! `[upstreams.NAME.on_demand]` reaches the model: defaults, `cwd` relative to the
//! config file's folder, `env` in file order; and the shipped example. (Errors are in
//! `errors.rs`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidegate_config::{defaults, load_file, load_str, OnDemand, UpstreamAddr};

const LISTENER: &str = r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
"#;

#[test]
fn on_demand_keys_reach_the_model_and_the_rest_default() {
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
servers = ["unix:app.sock"]
[upstreams.app.on_demand]
command = ["python3", "app.py", "--socket", "app.sock"]
env = {{ ZED = "last", APP_ENV = "prod" }}
cwd = "apps/app"
ready_timeout = "2s"
idle_stop = "90s"
stop_timeout = "250ms"

[upstreams.other]
servers = ["127.0.0.1:9000"]
on_demand = {{ command = ["./serve"] }}
"#
    );
    let config = load_str(&text, Some(Path::new("/etc/tidegate/tidegate.toml"))).expect("valid");
    let app = config.upstream("app").expect("app");
    assert_eq!(
        app.servers,
        [UpstreamAddr::Unix("/etc/tidegate/app.sock".into())]
    );
    assert_eq!(
        app.on_demand,
        Some(OnDemand {
            command: vec![
                "python3".into(),
                "app.py".into(),
                "--socket".into(),
                "app.sock".into()
            ],
            env: vec![
                ("ZED".into(), "last".into()),
                ("APP_ENV".into(), "prod".into())
            ],
            cwd: PathBuf::from("/etc/tidegate/apps/app"),
            ready_timeout: Duration::from_secs(2),
            idle_stop: Duration::from_secs(90),
            stop_timeout: Duration::from_millis(250),
        })
    );
    let other = config.upstream("other").expect("other");
    assert_eq!(
        other.on_demand,
        Some(OnDemand {
            command: vec!["./serve".into()],
            env: Vec::new(),
            // Default: the config file's folder.
            cwd: PathBuf::from("/etc/tidegate"),
            ready_timeout: defaults::ON_DEMAND_READY_TIMEOUT,
            idle_stop: defaults::ON_DEMAND_IDLE_STOP,
            stop_timeout: defaults::ON_DEMAND_STOP_TIMEOUT,
        })
    );
}

#[test]
fn an_absolute_cwd_is_kept_and_without_a_file_paths_are_relative_to_the_current_folder() {
    let text = format!(
        "{LISTENER}[upstreams.app]\nservers = \"unix:/run/a.sock\"\n\
         [upstreams.app.on_demand]\ncommand = [\"a\"]\ncwd = \"/srv/app\"\n"
    );
    let config = load_str(&text, Some(Path::new("/etc/tidegate/tidegate.toml"))).expect("valid");
    let od = config.upstreams[0].on_demand.as_ref().expect("on demand");
    assert_eq!(od.cwd, Path::new("/srv/app"));

    let text = format!(
        "{LISTENER}[upstreams.app]\nservers = \"unix:/run/a.sock\"\n\
         [upstreams.app.on_demand]\ncommand = [\"a\"]\n"
    );
    let config = load_str(&text, None).expect("valid");
    let od = config.upstreams[0].on_demand.as_ref().expect("on demand");
    assert_eq!(od.cwd, Path::new("."));
}

#[test]
fn an_upstream_without_on_demand_has_none() {
    let text = format!("{LISTENER}[upstreams.app]\nservers = \"127.0.0.1:3000\"\n");
    let config = load_str(&text, None).expect("valid");
    assert_eq!(config.upstreams[0].on_demand, None);
}

#[test]
fn the_lazyapp_example_runs_its_app_from_its_own_folder() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let config = load_file(&examples.join("lazyapp.toml")).expect("loads");
    let up = config.upstream("lazyapp").expect("lazyapp");
    let od = up.on_demand.as_ref().expect("on demand");
    assert_eq!(od.cwd, examples.join("lazyapp"));
    assert!(
        od.cwd.join("app.py").is_file(),
        "{} has no app.py",
        od.cwd.display()
    );
    assert_eq!(od.command[0], "python3");
    assert_eq!(
        up.servers,
        [UpstreamAddr::Unix(examples.join("lazyapp/lazyapp.sock"))]
    );
}
