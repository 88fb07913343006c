//! Reload, the binary's part: where the new config comes from (the `--config` file, with
//! the command-line overrides the process started with), and the settings outside the
//! data plane that a reload cannot apply (they take effect at the next binary upgrade
//! or restart). The data plane's part, and what a reload keeps, is
//! `tidegate_proxy::reload`.

use std::path::PathBuf;

use tidegate_admin::{ControlError, ReloadChange};
use tidegate_config::Config;

/// How the running process re-reads its config.
#[derive(Debug, Clone)]
pub struct Source {
    /// `--config`; `None` for the embedded quickstart, which has nothing to re-read.
    pub path: Option<PathBuf>,
    /// `--admin`, applied again to every config read.
    pub admin: Option<String>,
}

impl Source {
    /// The config file as it is now, validated; every error at once, as `check` prints
    /// them (`file:line:col: key: message`).
    pub fn load(&self) -> Result<Config, ControlError> {
        let Some(path) = &self.path else {
            return Err(ControlError::BadRequest(
                "tidegate runs the embedded quickstart (started without --config): there is no file to reload; restart it with --config FILE".into(),
            ));
        };
        let mut config =
            tidegate_config::load_file(path).map_err(|errors| ControlError::Invalid {
                message: format!(
                    "{} has {} error(s); nothing changed",
                    path.display(),
                    errors.len()
                ),
                errors: errors.iter().map(ToString::to_string).collect(),
            })?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        crate::admin::apply_override(&mut config, self.admin.as_deref()).map_err(|e| {
            ControlError::Invalid {
                message: "the --admin override does not apply; nothing changed".into(),
                errors: vec![e.trim().to_owned()],
            }
        })?;
        Ok(config)
    }
}

/// The process settings that differ between `old` and `new`. `shutdown_grace` applies
/// at once (it is read when a drain starts); the rest need a new process.
pub fn process_changes(old: &Config, new: &Config) -> Vec<ReloadChange> {
    let later = "takes effect at the next binary upgrade (tidegate ctl upgrade) or restart; the running process keeps the old value";
    let mut out = Vec::new();
    let mut push = |subject: &str, what: String, effect: &str| {
        out.push(ReloadChange {
            subject: subject.to_owned(),
            what,
            connections: 0,
            effect: effect.to_owned(),
        });
    };
    let (o, n) = (&old.server, &new.server);
    if o.shutdown_grace != n.shutdown_grace {
        push(
            "[server] shutdown_grace",
            format!(
                "{} -> {}",
                tidegate_config::parse::format_duration(o.shutdown_grace),
                tidegate_config::parse::format_duration(n.shutdown_grace)
            ),
            "applies to the next drain, and to connections a reload retires from now on",
        );
    }
    if o.workers != n.workers {
        push(
            "[server] workers",
            format!("{} -> {}", o.workers, n.workers),
            later,
        );
    }
    if o.log != n.log {
        push("[server] log", "level or format changed".into(), later);
    }
    if o.access_log != n.access_log {
        push(
            "[server] access_log",
            "destination or format changed".into(),
            later,
        );
    }
    if old.admin != new.admin {
        push("[admin]", "listen or limits changed".into(), later);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quickstart_has_nothing_to_reload() {
        let s = Source {
            path: None,
            admin: None,
        };
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("no file to reload"), "{e}");
    }

    #[test]
    fn process_settings_are_reported_as_waiting_for_a_new_process() {
        let old = tidegate_config::quickstart();
        let mut new = old.clone();
        new.server.workers = 3;
        new.server.shutdown_grace = std::time::Duration::from_secs(3);
        let changes = process_changes(&old, &new);
        let subjects: Vec<&str> = changes.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(subjects, ["[server] shutdown_grace", "[server] workers"]);
        assert!(changes[1].effect.contains("next binary upgrade"));
    }
}
