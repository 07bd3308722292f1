//! `distill data fetch` / `verify` against a loopback HTTP server (tests/src/http.rs): a `.part` resumed
//! with a Range request (kept only when the server takes ranges), and every failure (truncated response,
//! wrong checksum, 404, stalled server, an HTML page, no server at all) named with its URL and what to do
//! — with nothing half-written at the final path and the previous copy untouched.
//!
//! The cases serve small files made here; the whole data sets from their upstream copies are in
//! data_upstream.rs.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use distill_tests::http::{data, sha256_bytes as sha256_hex, Mode, Server};
use distill_tests::{stderr, stdout};

/// A one-file card for data set `name` in `dir`.
fn card(dir: &Path, name: &str, file: &str, size: usize, sha: &str) -> PathBuf {
    let p = dir.join("card.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nlicense = \"test\"\nsource = \"test\"\n[[file]]\nname = \"{file}\"\nsize = {size}\nsha256 = \"{sha}\"\nurl = \"https://example.invalid/{file}\"\n"
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

/// Where a fetch of data set `d` keeps a file it is downloading.
fn staged(dd: &Path, file: &str) -> PathBuf {
    dd.join(".d.fetch/out").join(file)
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
        err.contains(&format!("{}/d/f.bin", bad.url))
            && err.contains("25000 bytes kept")
            && err.contains("run the fetch again to resume"),
        "{err}"
    );
    assert!(!dd.join("d").exists(), "a data set folder appeared");
    assert_eq!(
        std::fs::read(staged(&dd, "f.bin.part")).unwrap(),
        &bytes[..25_000]
    );
    // the next fetch continues from byte 25000
    let good = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &good.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(good.seen()[0].range.as_deref(), Some("bytes=25000-"));
    assert_eq!(std::fs::read(dd.join("d/f.bin")).unwrap(), bytes);
    no_temp_files(&dd.join("d"));
    assert!(!dd.join(".d.fetch").exists(), "the staging folder was left");
}

#[test]
fn a_partial_download_is_removed_when_the_server_cannot_resume_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    let bad = Server::start(&served, Mode::TruncateNoRanges);
    let o = fetch_small(&c, &dd, &bad.url, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/d/f.bin", bad.url))
            && err.contains("does not accept range requests, so the partial download was removed"),
        "{err}"
    );
    assert!(!staged(&dd, "f.bin.part").exists());
    assert!(!dd.join("d").exists());
    // a server without ranges still delivers the whole file next time
    let whole = Server::start(&served, Mode::NoRanges);
    let o = fetch_small(&c, &dd, &whole.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(whole.seen()[0].range, None);
    assert_eq!(std::fs::read(dd.join("d/f.bin")).unwrap(), bytes);
}

#[test]
fn fetch_resumes_a_part_file_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    std::fs::create_dir_all(staged(&dd, "")).unwrap();
    std::fs::write(staged(&dd, "f.bin.part"), &bytes[..10_000]).unwrap();
    let server = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &server.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/d/f.bin");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=10000-"));
    assert_eq!(seen[0].body_bytes, bytes.len() - 10_000);
    assert_eq!(std::fs::read(dd.join("d/f.bin")).unwrap(), bytes);
    // complete and checked: a second fetch downloads nothing
    let o = fetch_small(&c, &dd, &server.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("complete already"), "{}", stdout(&o));
    assert_eq!(server.seen().len(), 1);
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
    assert!(
        !staged(&dd, "f.bin.part").exists(),
        "a wrong download was kept"
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
    assert!(!dd.join("d").exists());
    assert!(!staged(&dd, "absent.bin.part").exists());
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
    assert!(!dd.join("d").exists());
}

#[test]
fn an_html_page_instead_of_the_file_is_refused_labelled_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    for mode in [Mode::Html, Mode::HtmlUnlabelled] {
        let server = Server::start(&served, mode);
        let o = fetch_small(&c, &dd, &server.url, &[]);
        assert_eq!(o.status.code(), Some(2), "{mode:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "{}/d/f.bin: the server sent an HTML page",
                server.url
            )) && err.contains("not f.bin"),
            "{mode:?}: {err}"
        );
        assert!(!staged(&dd, "f.bin.part").exists(), "{mode:?}");
        assert!(!dd.join("d").exists(), "{mode:?}");
    }
}

#[test]
fn no_server_at_all_says_what_to_do_without_a_network() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    // a port nothing listens on: the connection is refused, as with no network
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = fetch_small(&c, &dd, &format!("http://127.0.0.1:{port}"), &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/d/f.bin: cannot connect"))
            && err.contains("point DISTILL_DATA at an existing copy"),
        "{err}"
    );
    assert!(!dd.join("d").exists());
}

#[test]
fn a_folder_that_does_not_verify_is_replaced_and_kept_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, dd, bytes) = small_files(tmp.path());
    let c = card(tmp.path(), "d", "f.bin", bytes.len(), &sha256_hex(&bytes));
    std::fs::create_dir_all(dd.join("d")).unwrap();
    std::fs::write(dd.join("d/f.bin"), b"damaged").unwrap();
    std::fs::write(dd.join("d/my-notes.txt"), b"mine").unwrap();
    let server = Server::start(&served, Mode::Files);
    let o = fetch_small(&c, &dd, &server.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(dd.join("d/f.bin")).unwrap(), bytes);
    let aside: Vec<PathBuf> = std::fs::read_dir(&dd)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("d.replaced-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("my-notes.txt")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read(aside[0].join("f.bin")).unwrap(), b"damaged");
    assert!(
        stdout(&o).contains(&format!("it was moved to {}", aside[0].display())),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bench_names_the_missing_data_sets_fetch_before_running_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (dd, out) = (tmp.path().join("data"), tmp.path().join("out"));
    std::fs::create_dir_all(&dd).unwrap();
    // from the project root (where the plugins' recipe lists point), with an empty data dir
    let o = distill_tests::distill(
        &distill_tests::root(),
        &[
            "bench",
            "--data-dir",
            dd.to_str().unwrap(),
            "--no-cache",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "not found in {}: get it with `distill data fetch ",
            dd.display()
        )) && err.contains("--fetch"),
        "{err}"
    );
    let ran = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(ran, 0, "a run started before the check");
}
