//! A loopback HTTP/1.1 file server for the fetch tests (std::net, one thread per connection): it serves a
//! folder, honours `Range: bytes=N-`, and can misbehave on purpose (truncate, stall, send an HTML page,
//! refuse ranges, trickle bytes slowly so that a test can kill a fetch part way) — and the commands and
//! checksums the fetch tests share.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// How the server answers.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Files under the root with `Accept-Ranges: bytes`, honouring `Range: bytes=N-`; 404 for a missing file.
    Files,
    /// Files, but no range support: every answer is the whole file, with no `Accept-Ranges`.
    NoRanges,
    /// Announces the whole file in Content-Length (with `Accept-Ranges: bytes`), sends half of it, closes.
    Truncate,
    /// As `Truncate`, without `Accept-Ranges`.
    TruncateNoRanges,
    /// Accepts, reads the request, never answers.
    Stall,
    /// Answers every request with `200` and an HTML page (`Content-Type: text/html`).
    Html,
    /// Answers with an HTML page labelled `application/octet-stream`.
    HtmlUnlabelled,
    /// Files (with ranges), sent in 16 KiB pieces with this many milliseconds between them.
    Slow(u64),
}

/// One request the server saw: the path, its Range header, and the body bytes sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Bytes of body sent.
    pub body_bytes: usize,
}

/// A running server; it lives until the test process ends.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves `root` in `mode`.
    pub fn start(root: &Path, mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_path_buf(), seen.clone());
        std::thread::spawn(move || {
            let held = Arc::new(Mutex::new(Vec::new())); // stalled connections stay open
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (root, log, held) = (root.clone(), log.clone(), held.clone());
                std::thread::spawn(move || {
                    if let Some(s) = serve(stream, &root, mode, &log) {
                        held.lock().unwrap().push(s);
                    }
                });
            }
        });
        Server { url, seen }
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(stream: &mut TcpStream, status: &str, extra: &str, len: usize) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
}

fn serve(
    mut stream: TcpStream,
    root: &Path,
    mode: Mode,
    log: &Mutex<Vec<Seen>>,
) -> Option<TcpStream> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split(' ').nth(1)?.to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut record = Seen {
        path: path.clone(),
        range: range.clone(),
        body_bytes: 0,
    };
    match mode {
        Mode::Stall => {
            log.lock().unwrap().push(record);
            return Some(stream);
        }
        Mode::Html | Mode::HtmlUnlabelled => {
            let page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in to download this file.</body></html>\n";
            let ty = if matches!(mode, Mode::Html) {
                "text/html; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            header(
                &mut stream,
                "200 OK",
                &format!("Content-Type: {ty}\r\n"),
                page.len(),
            );
            let _ = stream.write_all(page);
            record.body_bytes = page.len();
            log.lock().unwrap().push(record);
            return None;
        }
        _ => {}
    }
    let file: PathBuf = root.join(path.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        header(&mut stream, "404 Not Found", "", 9);
        let _ = stream.write_all(b"not found");
        log.lock().unwrap().push(record);
        return None;
    };
    let len = body.len();
    let ranges = !matches!(mode, Mode::NoRanges | Mode::TruncateNoRanges);
    let accept = if ranges {
        "Accept-Ranges: bytes\r\n"
    } else {
        ""
    };
    let start = range
        .as_deref()
        .filter(|_| ranges)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let sent: &[u8] = match (mode, start) {
        (Mode::Truncate | Mode::TruncateNoRanges, _) => {
            header(&mut stream, "200 OK", accept, len);
            &body[..len / 2]
        }
        (_, Some(s)) if s >= len => {
            header(
                &mut stream,
                "416 Range Not Satisfiable",
                &format!("Content-Range: bytes */{len}\r\n"),
                0,
            );
            &[]
        }
        (_, Some(s)) => {
            header(
                &mut stream,
                "206 Partial Content",
                &format!("{accept}Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
                len - s,
            );
            &body[s..]
        }
        (_, None) => {
            header(&mut stream, "200 OK", accept, len);
            &body
        }
    };
    if let Mode::Slow(ms) = mode {
        for piece in sent.chunks(16 << 10) {
            if stream.write_all(piece).is_err() {
                break;
            }
            record.body_bytes += piece.len();
            std::thread::sleep(Duration::from_millis(ms));
        }
    } else {
        let _ = stream.write_all(sent);
        record.body_bytes = sent.len();
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    log.lock().unwrap().push(record);
    None
}

/// `distill data ARGS`, with no data dir or mirror from the environment.
pub fn data(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::distill_bin())
        .arg("data")
        .args(args)
        .env_remove("DISTILL_DATA_MIRROR")
        .env_remove("DISTILL_DATA")
        .output()
        .unwrap()
}

/// A file's sha256 by coreutils' `sha256sum`, independent of the code under test.
pub fn sha256_file(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// The sha256 of `bytes` by coreutils.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// Copies the `.gz` files of a prepared MNIST folder into `mirror/mnist/` (MNIST's upstream files are the
/// published gzip files themselves) and serves `mirror`.
pub fn serve_mnist_copy(prepared: &Path, mirror: &Path) -> Server {
    let dir = mirror.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(prepared).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".gz") {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    Server::start(mirror, Mode::Files)
}
