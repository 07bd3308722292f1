//! Upstream archives that try to escape, and fetches killed at random points.
//!
//! * A zip (and a tar.gz) with a `../` entry, an absolute path, a symbolic link or an entry larger than the
//!   card allows is refused with an error naming the entry and why; nothing is written outside the target
//!   folder and no data set folder appears.
//! * A fetch of an archive data set served slowly is SIGKILLed at pseudo-random points (download, unpacking,
//!   checking) in 12 trials; while it runs and after each kill, the data set folder is either absent or
//!   complete (a reader polls it), and a last fetch completes, resuming, and verifies.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use distill_tests::http::{data, sha256_bytes, sha256_file, Mode, Server};
use distill_tests::{distill_bin, stderr, stdout};

/// A card for data set `a` with one zip or tar.gz upstream unpacked into the data set, and the files it
/// should give.
fn archive_card(
    tmp: &Path,
    archive: &Path,
    kind: &str,
    max_entry: u64,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let name = archive.file_name().unwrap().to_str().unwrap();
    let mut card = format!(
        "name = \"a\"\nlicense = \"test\"\nsource = \"test\"\n[[upstream]]\nname = \"{name}\"\nurl = \"https://example.invalid/{name}\"\nsha256 = \"{}\"\nunpack = \"{kind}\"\nunpack_to = \"dataset\"\nmax_entry = {max_entry}\n",
        sha256_file(archive)
    );
    for (f, bytes) in files {
        card.push_str(&format!(
            "[[file]]\nname = \"{f}\"\nsize = {}\nsha256 = \"{}\"\n",
            bytes.len(),
            sha256_bytes(bytes)
        ));
    }
    let p = tmp.join("card.toml");
    std::fs::write(&p, card).unwrap();
    p
}

fn zip_with(path: &Path, entries: &[(&str, &[u8])], link: Option<(&str, &str)>) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    if let Some((name, target)) = link {
        z.add_symlink(name, target, opts).unwrap();
    }
    z.finish().unwrap();
}

/// Serves `archive` as data set `a`'s upstream file and fetches it into `tmp/work/data`.
fn fetch_archive(tmp: &Path, archive: &Path, card: &Path) -> Output {
    let served = tmp.join("served/a");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(archive, served.join(archive.file_name().unwrap())).unwrap();
    let server = Server::start(&tmp.join("served"), Mode::Files);
    let dd = tmp.join("work/data");
    data(&[
        "fetch",
        "a",
        "--data-dir",
        dd.to_str().unwrap(),
        "--card",
        card.to_str().unwrap(),
        "--base-url",
        &server.url,
    ])
}

/// Every file under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn assert_refused(tmp: &Path, o: &Output, entry: &str, why: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stdout(o));
    let err = stderr(o);
    assert!(
        err.contains("archive refused") && err.contains(entry) && err.contains(why),
        "expected `{entry}` refused for `{why}`: {err}"
    );
    let work = tmp.join("work");
    assert!(!work.join("data/a").exists(), "a data set folder appeared");
    // nothing outside the staging area of the data dir: no escaped file anywhere under tmp (but the
    // archive's own sources)
    for f in tree(tmp).iter().filter(|f| !f.starts_with("src/")) {
        assert!(!f.contains("escaped"), "{f} was written");
    }
    assert!(
        tree(&work).iter().all(|f| f.starts_with("data/.a.fetch")),
        "{:?}",
        tree(&work)
    );
}

#[test]
fn a_zip_entry_climbing_out_with_dotdot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("a.zip");
    zip_with(
        &z,
        &[("ok.txt", b"fine"), ("../../escaped.txt", b"pwned")],
        None,
    );
    let c = archive_card(tmp.path(), &z, "zip", 1000, &[("ok.txt", b"fine")]);
    let o = fetch_archive(tmp.path(), &z, &c);
    assert_refused(
        tmp.path(),
        &o,
        "../../escaped.txt",
        "climbs out of the target folder",
    );
}

#[test]
fn a_zip_entry_with_an_absolute_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("abs-escaped.txt");
    let z = tmp.path().join("a.zip");
    let abs = target.display().to_string();
    zip_with(&z, &[("ok.txt", b"fine"), (abs.as_str(), b"pwned")], None);
    let c = archive_card(tmp.path(), &z, "zip", 1000, &[("ok.txt", b"fine")]);
    let o = fetch_archive(tmp.path(), &z, &c);
    assert_refused(tmp.path(), &o, &abs, "is an absolute path");
    assert!(!target.exists());
}

#[test]
fn a_zip_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("a.zip");
    zip_with(
        &z,
        &[("ok.txt", b"fine")],
        Some(("escaped-link", "/etc/passwd")),
    );
    let c = archive_card(tmp.path(), &z, "zip", 1000, &[("ok.txt", b"fine")]);
    let o = fetch_archive(tmp.path(), &z, &c);
    assert_refused(tmp.path(), &o, "escaped-link", "is a symbolic link");
}

#[test]
fn a_zip_entry_larger_than_the_card_allows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("a.zip");
    let big = vec![b'x'; 5000];
    zip_with(&z, &[("ok.txt", b"fine"), ("escaped-big.bin", &big)], None);
    let c = archive_card(tmp.path(), &z, "zip", 1000, &[("ok.txt", b"fine")]);
    let o = fetch_archive(tmp.path(), &z, &c);
    assert_refused(
        tmp.path(),
        &o,
        "escaped-big.bin",
        "more than the 1000 the card allows",
    );
}

#[test]
fn tar_gz_links_and_dotdot_entries_are_refused_too() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("in")).unwrap();
    std::fs::write(src.join("in/ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("in/escaped-link")).unwrap();
    let t = tmp.path().join("a.tar.gz");
    let o = Command::new("tar")
        .arg("czf")
        .arg(&t)
        .arg("-C")
        .arg(&src)
        .arg("in")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let c = archive_card(tmp.path(), &t, "tar.gz", 1000, &[("in/ok.txt", b"fine")]);
    let o = fetch_archive(tmp.path(), &t, &c);
    assert_refused(
        tmp.path(),
        &o,
        "escaped-link",
        "is a symbolic link (to `/etc/passwd`)",
    );

    // GNU tar keeps a `../` member name with -P
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("src/in");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(tmp.path().join("src/escaped.txt"), b"pwned").unwrap();
    let t = tmp.path().join("a.tar.gz");
    let o = Command::new("tar")
        .args(["czPf"])
        .arg(&t)
        .arg("../escaped.txt")
        .current_dir(&inner)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(tmp.path().join("src/escaped.txt")).unwrap();
    let c = archive_card(tmp.path(), &t, "tar.gz", 1000, &[]);
    let o = fetch_archive(tmp.path(), &t, &c);
    assert_refused(
        tmp.path(),
        &o,
        "../escaped.txt",
        "climbs out of the target folder",
    );
}

/// A small deterministic generator for the kill times (printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn a_fetch_killed_at_random_points_never_leaves_a_half_data_set_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    // 480 members of 12 KiB (stored: 5.6 MiB to download, 480 files to unpack and fsync)
    let members: Vec<(String, Vec<u8>)> = (0..480u32)
        .map(|i| {
            let mut x = i.wrapping_mul(2654435761) | 1;
            let bytes = (0..12 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            (format!("part/{i:03}.bin"), bytes)
        })
        .collect();
    let z = tmp.path().join("a.zip");
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    zip_with(&z, &refs, None);
    let c = archive_card(tmp.path(), &z, "zip", 1 << 20, &refs);
    let served = tmp.path().join("served/a");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(&z, served.join("a.zip")).unwrap();
    let server = Server::start(&tmp.path().join("served"), Mode::Slow(2));
    let dd = tmp.path().join("data");
    let target = dd.join("a");
    let fetch_cmd = || {
        let mut cmd = Command::new(distill_bin());
        cmd.args(["data", "fetch", "a", "--data-dir"])
            .arg(&dd)
            .arg("--card")
            .arg(&c)
            .args(["--base-url", &server.url])
            .env_remove("DISTILL_DATA_MIRROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };

    // a reader that, whenever the data set folder exists, reads it whole: it must always be complete
    let stop = Arc::new(AtomicBool::new(false));
    let looks = Arc::new(AtomicUsize::new(0));
    // (the test's own removal of a finished data set between trials holds `gate`)
    let gate = Arc::new(Mutex::new(()));
    let reader = {
        let (stop, looks, target, gate) =
            (stop.clone(), looks.clone(), target.clone(), gate.clone());
        let want = members.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _held = gate.lock().unwrap();
                if target.is_dir() {
                    for (n, b) in &want {
                        let got = std::fs::read(target.join(n)).unwrap_or_else(|e| {
                            panic!("the data set is visible but {n} is not readable: {e}")
                        });
                        assert!(&got == b, "the data set is visible but {n} is not complete");
                    }
                    looks.fetch_add(1, Ordering::Relaxed);
                }
                drop(_held);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    // how long an unkilled fetch takes, to spread the kills over it
    let t = Instant::now();
    let whole = fetch_cmd().status().unwrap();
    assert!(whole.success());
    let span = t.elapsed().as_millis() as u64;
    {
        let _g = gate.lock().unwrap();
        std::fs::remove_dir_all(&target).unwrap();
    }

    let mut rng = Lcg(20261207);
    let mut phases = Vec::new();
    let staging = dd.join(".a.fetch");
    for trial in 0..12 {
        let mut at = 30 + rng.next() % span.max(60);
        let mut child = fetch_cmd().spawn().unwrap();
        if trial % 3 == 2 {
            // every third trial waits for the unpacking to start, then kills within it
            let t = Instant::now();
            while !staging.join("sources/a.unpacking").exists()
                && t.elapsed() < Duration::from_secs(30)
            {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.next() % 40));
            at = t.elapsed().as_millis() as u64;
        } else {
            std::thread::sleep(Duration::from_millis(at));
        }
        let phase = if target.is_dir() {
            "done"
        } else if staging.join("sources/a.unpacking").exists() {
            "unpacking"
        } else if staging.join("sources/a.zip.part").exists() {
            "download"
        } else if staging.join("out/part").exists() {
            "checking"
        } else {
            "start"
        };
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        phases.push(format!("trial {trial}: killed at {at} ms ({phase})"));
        // after a kill: no data set folder, or a complete one
        if target.is_dir() {
            for (n, b) in &members {
                assert_eq!(
                    &std::fs::read(target.join(n)).unwrap(),
                    b,
                    "trial {trial}: {n}"
                );
            }
            let _g = gate.lock().unwrap();
            std::fs::remove_dir_all(&target).unwrap(); // the next trial starts again
        }
    }
    eprintln!("unkilled fetch: {span} ms\n{}", phases.join("\n"));
    for phase in ["(download)", "(unpacking)"] {
        assert!(
            phases.iter().any(|p| p.contains(phase)),
            "no kill landed in {phase}: {phases:?}"
        );
    }
    let o = fetch_cmd()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        looks.load(Ordering::Relaxed) > 0,
        "the reader never saw the data set"
    );
    let o = data(&[
        "verify",
        "a",
        "--data-dir",
        dd.to_str().unwrap(),
        "--card",
        c.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        server.seen().iter().any(|s| s.range.is_some()),
        "no kill left a partial download to resume"
    );
    assert!(!dd.join(".a.fetch").exists());
}
