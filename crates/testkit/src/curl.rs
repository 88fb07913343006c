//! `curl --unix-socket`: the admin API must work with the tool operators reach for
//! first, so tests use the real one. A missing curl fails the test with a message.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, ensure, Context as _};

/// `curl --unix-socket PATH -X METHOD http://admin/URL_PATH` → (HTTP status, body).
/// curl itself must succeed (any HTTP status is fine); at most 2 s.
pub async fn curl_unix(
    path: &Path,
    method: &str,
    url_path: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "2", "-X", method, "--unix-socket"])
        .arg(path)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://admin{url_path}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this test needs curl (the admin API must work with `curl --unix-socket`), and \
             curl is not installed: install it (apt-get install -y curl)"
        ),
        Err(e) => return Err(e).context("run curl"),
    };
    ensure!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdout = out.stdout;
    let pos = stdout
        .iter()
        .rposition(|b| *b == b'\n')
        .context("no status line from curl -w")?;
    let code = std::str::from_utf8(&stdout[pos + 1..])?.trim().parse()?;
    stdout.truncate(pos);
    Ok((code, stdout))
}
