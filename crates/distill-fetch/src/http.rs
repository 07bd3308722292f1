//! Downloads that resume: a file goes to `FILE.part`, continued with an HTTP `Range` request when one is
//! already there, and is fsynced before the caller checks it. Every error names the URL and says what a user
//! can do: no network, a stalled server, an HTML page where a data file was expected, a full disk.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use indicatif::ProgressBar;

/// An HTTP client with the fetch's timeouts.
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client that waits `connect` for a connection and `read` for each read.
    pub fn new(connect: Duration, read: Duration) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(connect)
                .timeout_read(read)
                .build(),
        }
    }
}

/// `dest` with `.part` appended to its name.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Whether an I/O error means the disk is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// The error for a failed write to `path`: a full disk is said as such.
pub fn write_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    if is_disk_full(&e) {
        anyhow!(
            "the disk holding {} is full: free some space and run the fetch again (what was downloaded is kept and resumed; nothing incomplete is put in place)",
            path.display()
        )
    } else {
        anyhow!("writing {}: {e}", path.display())
    }
}

/// Whether the first bytes of a body look like an HTML page.
pub fn looks_like_html(head: &[u8]) -> bool {
    let text: Vec<u8> = head
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == 0xef || **b == 0xbb || **b == 0xbf)
        .take(15)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    text.starts_with(b"<!doctype html") || text.starts_with(b"<html") || text.starts_with(b"<head")
}

fn expects_html(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".html") || n.ends_with(".htm")
}

/// Downloads `url` into `part` (continuing what is there with a `Range` request when the server allows it);
/// the file is fsynced before this returns. `size` is the card's size, when it pins one.
pub fn download(
    client: &Client,
    url: &str,
    part: &Path,
    size: Option<u64>,
    bar: &ProgressBar,
) -> Result<()> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > 0 && size == Some(have) {
        return Ok(()); // complete already (a fetch killed before its check); checked by the caller
    }
    if let Some(s) = size {
        if have > s {
            let _ = fs::remove_file(part);
            return download(client, url, part, size, bar);
        }
    }
    let mut req = client.agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // the part file is the whole file already, or longer than it: the caller's check decides
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            let hint = match code {
                404 | 410 => " (the file is not there: the card's URL may be out of date; try a mirror with --base-url)",
                401 | 403 => " (the server refused it: a mirror may need a login; try another with --base-url)",
                429 | 500..=599 => " (a server-side problem: try again later or use a mirror with --base-url)",
                _ => "",
            };
            bail!("{url}: HTTP {code} {}{hint}", r.status_text())
        }
        Err(ureq::Error::Transport(t)) => return Err(transport_error(url, &t)),
    };
    let start = match resp.status() {
        206 => {
            let range = resp.header("Content-Range").unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                bail!("{url}: the server answered the range request bytes={have}- with Content-Range `{range}`");
            }
            have
        }
        200 => 0,
        code => bail!(
            "{url}: unexpected HTTP status {code} {}",
            resp.status_text()
        ),
    };
    // a kept partial download is only worth something when the server can continue it
    let resumable = start > 0
        || resp
            .header("Accept-Ranges")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("bytes"));
    let is_html_type = resp
        .header("Content-Type")
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("text/html"));
    let name = part
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".part")
        .to_string();
    if is_html_type && start == 0 && !expects_html(&name) {
        let _ = fs::remove_file(part);
        bail!(
            "{url}: the server sent an HTML page (Content-Type text/html), not {name}: a login, error or \"file moved\" page, not the data; check the URL or use another mirror with --base-url"
        );
    }
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let total = length.map(|l| l + start).or(size);
    if let (Some(t), Some(s)) = (total, size) {
        if t > s {
            bail!("{url}: the server announces {t} bytes but the card says {s}: not the expected file");
        }
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(part)
        .map_err(|e| write_error(part, e))?;
    bar.set_length(total.unwrap_or(0));
    bar.set_position(start);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let give_up = |received: u64, why: String| -> anyhow::Error {
        if resumable {
            anyhow!(
                "{url}: {why} ({} bytes kept in {}; run the fetch again to resume)",
                start + received,
                part.display()
            )
        } else {
            let _ = fs::remove_file(part);
            anyhow!(
                "{url}: {why} (the server does not accept range requests, so the partial download was removed; the next fetch starts it again)"
            )
        }
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = out.sync_all();
                let what = if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) {
                    "timed out waiting for data (stalled server)".to_string()
                } else {
                    e.to_string()
                };
                return Err(give_up(
                    received,
                    format!(
                        "download interrupted after {received}{} bytes: {what}",
                        length.map(|l| format!(" of {l}")).unwrap_or_default()
                    ),
                ));
            }
        };
        if n == 0 {
            break;
        }
        if start == 0 && received == 0 && !expects_html(&name) && looks_like_html(&buf[..n]) {
            drop(out);
            let _ = fs::remove_file(part);
            bail!(
                "{url}: the server sent an HTML page, not {name}: a login, error or \"file moved\" page, not the data; check the URL or use another mirror with --base-url"
            );
        }
        out.write_all(&buf[..n]).map_err(|e| write_error(part, e))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(|e| write_error(part, e))?;
    if let Some(l) = length {
        if received < l {
            return Err(give_up(
                received,
                format!("truncated response: the server closed the connection after {received} of {l} bytes"),
            ));
        }
    }
    Ok(())
}

/// The host cannot be reached at all (no network, no DNS, nothing listening): a fetch stops at the first
/// such error instead of trying every other file of the same host.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A transport error as something a user can act on.
fn transport_error(url: &str, t: &ureq::Transport) -> anyhow::Error {
    let detail = match (t.message(), std::error::Error::source(t)) {
        (Some(m), Some(s)) => format!("{m}: {s}"),
        (Some(m), None) => m.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => t.to_string(),
    };
    let offline = "without a network, point DISTILL_DATA at an existing copy of the data set, or fetch from a reachable mirror with --base-url";
    match t.kind() {
        ureq::ErrorKind::Dns => anyhow::Error::new(Unreachable(format!(
            "{url}: cannot resolve the host (no network, or no DNS): {detail}; {offline}"
        ))),
        ureq::ErrorKind::ConnectionFailed => anyhow::Error::new(Unreachable(format!(
            "{url}: cannot connect (no network, a firewall, or the server is down): {detail}; {offline}"
        ))),
        _ if detail.contains("timed out")
            || detail.contains("WouldBlock")
            || detail.contains("temporarily unavailable") =>
        {
            anyhow!("{url}: timed out waiting for the server (stalled or unreachable): {detail}")
        }
        _ => anyhow!("{url}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_pages_are_recognised() {
        assert!(looks_like_html(b"\n  <!DOCTYPE html><html>"));
        assert!(looks_like_html(b"<HTML><body>moved</body>"));
        assert!(!looks_like_html(b"\x1f\x8b\x08\x00"));
        assert!(!looks_like_html(b"sentence\tlabel\n"));
    }

    #[test]
    fn a_full_disk_is_named() {
        let e = write_error(
            Path::new("/data/x.part"),
            std::io::Error::from_raw_os_error(28),
        );
        assert!(
            e.to_string().contains("disk holding /data/x.part is full"),
            "{e}"
        );
    }
}
