//! `distill data fetch` / `verify` against a local HTTP server (std::net, one thread): a whole data set
//! fetched and verified, a `.part` resumed with a Range request, and every failure (truncated response,
//! wrong checksum, 404, stalled server) named with its URL — with nothing half-written at the final path.
//!
//! The real-data cases serve `$DISTILL_DATA` (CI sets it); they print a note and return when it is unset.
//! The failure cases serve small files made here.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Output,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use distill_tests::{distill_bin, stderr, stdout};

/// How the test server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Files under the root, honouring `Range: bytes=N-`; 404 for a missing file.
    Files,
    /// Announces the whole file in Content-Length, sends half of it, closes.
    Truncate,
    /// Accepts, reads the request, never answers.
    Stall,
}

/// One request the server saw: the path and its Range header, if any.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    body_bytes: usize,
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(root: &Path, mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_path_buf(), seen.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new(); // stalled connections stay open until the test ends
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(s) = serve(stream, &root, mode, &log) {
                    held.push(s);
                }
            }
        });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
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
    if let Mode::Stall = mode {
        log.lock().unwrap().push(record);
        return Some(stream);
    }
    let file = root.join(path.trim_start_matches('/'));
    let Ok(body) = std::fs::read(&file) else {
        let msg = b"not found";
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        );
        let _ = stream.write_all(msg);
        log.lock().unwrap().push(record);
        return None;
    };
    let len = body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match (mode, start) {
        (Mode::Truncate, _) => {
            let half = &body[..len / 2];
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(half);
            record.body_bytes = half.len();
        }
        (_, Some(s)) if s >= len => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        (_, Some(s)) => {
            let _ = write!(
                stream,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - s
            );
            let _ = stream.write_all(&body[s..]);
            record.body_bytes = len - s;
        }
        (_, None) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(&body);
            record.body_bytes = len;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    log.lock().unwrap().push(record);
    None
}

/// `distill data ARGS` with no mirror from the environment.
fn data(args: &[&str]) -> Output {
    std::process::Command::new(distill_bin())
        .arg("data")
        .args(args)
        .env_remove("DISTILL_DATA_MIRROR")
        .env_remove("DISTILL_DATA")
        .output()
        .unwrap()
}

fn shared_data() -> Option<PathBuf> {
    distill_data::testing::required_dir("DISTILL_DATA", Some("cora"), "the real-data fetch test")
}

fn sha256_hex(bytes: &[u8]) -> String {
    // the same digest the CLI uses, computed by coreutils to keep this independent of the code under test
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(tmp.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// A one-file card for data set `name` in `dir`.
fn card(dir: &Path, name: &str, file: &str, size: usize, sha: &str) -> PathBuf {
    let p = dir.join("card.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nlicense = \"test\"\nsource = \"test\"\n[[file]]\nname = \"{file}\"\nsize = {size}\nsha256 = \"{sha}\"\n"
        ),
    )
    .unwrap();
    p
}

fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.ends_with(".part"), "{n} left in {}", dir.display());
    }
}

#[test]
fn fetch_then_verify_cora_from_a_mirror_and_verify_names_each_bad_file() {
    let Some(shared) = shared_data() else { return };
    let server = Server::start(&shared, Mode::Files);
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().to_str().unwrap();
    let o = data(&["fetch", "cora", "--data-dir", dd, "--base-url", &server.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("7 downloaded"), "{}", stdout(&o));
    let files = [
        "nodes.tsv",
        "edges.tsv",
        "split_train.txt",
        "split_val.txt",
        "split_test.txt",
        "classes.tsv",
        "linqs_cora.cites",
    ];
    for f in files {
        let got = std::fs::read(tmp.path().join("cora").join(f)).unwrap();
        assert_eq!(
            got,
            std::fs::read(shared.join("cora").join(f)).unwrap(),
            "{f}"
        );
    }
    no_temp_files(&tmp.path().join("cora"));
    let o = data(&["verify", "cora", "--data-dir", dd]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("all 7 files verified"),
        "{}",
        stdout(&o)
    );

    // one file changed in place, one shortened, one removed: each is named with what is wrong
    let cora = tmp.path().join("cora");
    let mut nodes = std::fs::read(cora.join("nodes.tsv")).unwrap();
    nodes[1000] ^= 1;
    std::fs::write(cora.join("nodes.tsv"), &nodes).unwrap();
    let edges = std::fs::read(cora.join("edges.tsv")).unwrap();
    std::fs::write(cora.join("edges.tsv"), &edges[..100]).unwrap();
    std::fs::remove_file(cora.join("split_val.txt")).unwrap();
    let o = data(&["verify", "cora", "--data-dir", dd]);
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "{}: sha256 mismatch",
            cora.join("nodes.tsv").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: wrong size: expected 48444 bytes, found 100",
            cora.join("edges.tsv").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: missing",
            cora.join("split_val.txt").display()
        )),
        "{out}"
    );
    assert!(
        stderr(&o).contains("3 of 7 files failed verification"),
        "{}",
        stderr(&o)
    );

    // a second fetch replaces exactly the three bad files
    let o = data(&["fetch", "cora", "--data-dir", dd, "--base-url", &server.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("3 downloaded, 4 already there"),
        "{}",
        stdout(&o)
    );
    assert!(data(&["verify", "cora", "--data-dir", dd]).status.success());
}

#[test]
fn fetch_resumes_a_part_file_with_a_range_request() {
    let Some(shared) = shared_data() else { return };
    let real = std::fs::read(shared.join("cora/nodes.tsv")).unwrap();
    let server = Server::start(&shared, Mode::Files);
    let tmp = tempfile::tempdir().unwrap();
    let c = card(
        tmp.path(),
        "cora",
        "nodes.tsv",
        real.len(),
        &sha256_hex(&real),
    );
    let dir = tmp.path().join("data/cora");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nodes.tsv.part"), &real[..100_000]).unwrap();
    let dd = tmp.path().join("data");
    let o = data(&[
        "fetch",
        "cora",
        "--data-dir",
        dd.to_str().unwrap(),
        "--card",
        c.to_str().unwrap(),
        "--base-url",
        &server.url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/cora/nodes.tsv");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(seen[0].body_bytes, real.len() - 100_000);
    assert_eq!(std::fs::read(dir.join("nodes.tsv")).unwrap(), real);
    no_temp_files(&dir);
}

/// Small files made here, for the failure cases: `(root served, data dir, bytes of d/f.bin)`.
fn small_files(tmp: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let served = tmp.join("served");
    std::fs::create_dir_all(served.join("d")).unwrap();
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(served.join("d/f.bin"), &bytes).unwrap();
    (served, tmp.join("data"), bytes)
}

fn fetch_small(card: &Path, data_dir: &Path, url: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "fetch",
        "d",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--card",
        card.to_str().unwrap(),
        "--base-url",
        url,
    ];
    args.extend_from_slice(extra);
    data(&args)
}

#[test]
fn a_truncated_response_is_kept_as_part_then_resumed_never_put_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    let bad = Server::start(&served, Mode::Truncate);
    let o = fetch_small(&c, &dd, &bad.url, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/d/f.bin", bad.url)) && err.contains("25000"),
        "{err}"
    );
    assert!(
        !dd.join("d/f.bin").exists(),
        "a truncated file was put in place"
    );
    assert_eq!(
        std::fs::read(dd.join("d/f.bin.part")).unwrap(),
        &bytes[..25_000]
    );
    // the next fetch continues from byte 25000
    let good = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &good.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(good.seen()[0].range.as_deref(), Some("bytes=25000-"));
    assert_eq!(std::fs::read(dd.join("d/f.bin")).unwrap(), bytes);
    no_temp_files(&dd.join("d"));
}

#[test]
fn a_wrong_checksum_is_refused_and_the_previous_file_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let wrong = "0".repeat(64);
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &wrong);
    std::fs::create_dir_all(dd.join("d")).unwrap();
    std::fs::write(dd.join("d/f.bin"), b"the previous file").unwrap();
    let server = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &server.url, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/d/f.bin", server.url))
            && err.contains(&format!(
                "sha256 mismatch: expected {wrong}, found {}",
                sha256_hex(&bytes)
            )),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dd.join("d/f.bin")).unwrap(),
        b"the previous file"
    );
    no_temp_files(&dd.join("d"));
}

#[test]
fn a_404_names_the_url_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, _) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "absent.bin", 10, &"0".repeat(64));
    let server = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &server.url, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/d/absent.bin: HTTP 404", server.url)),
        "{err}"
    );
    assert!(!dd.join("d/absent.bin").exists());
    assert!(!dd.join("d/absent.bin.part").exists());
}

#[test]
fn a_stalled_server_times_out_with_the_url_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    let server = Server::start(&served, Mode::Stall);
    let t = Instant::now();
    let o = fetch_small(&c, &dd, &server.url, &["--read-timeout", "0.5"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/d/f.bin", server.url)) && err.contains("timed out"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(server.seen().len(), 1);
    assert!(!dd.join("d/f.bin").exists());
}

#[test]
fn a_converted_file_without_a_mirror_says_where_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let o = data(&["fetch", "sst2", "--data-dir", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("sst2/train.tsv: the card gives no download URL")
            && err.contains("--base-url"),
        "{err}"
    );
    assert!(!tmp.path().join("sst2/train.tsv").exists());
}
