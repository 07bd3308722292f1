//! Every data set card fetched from its upstream format: a copy of what the public upstream publishes is made
//! from the prepared data in `$DISTILL_DATA` (distill_fetch::testing, so nothing is downloaded), served by a
//! loopback HTTP server, fetched with `distill data fetch NAME --base-url`, and then `distill data verify NAME`
//! (the built-in card) must pass and `sha256sum -c` of the prepared copy's own SHA256SUMS must agree — the
//! conversions in Rust give the prepared files byte for byte.
//!
//! Sources the copy cannot make byte-identical to the real upstream file (a pickle written here rather than by
//! Python 2) get their checksum from the copy in a card written for the test; every other upstream file must
//! match the checksum the built-in card pins for the real one. These tests need `$DISTILL_DATA` (CI sets it):
//! under CI=true they fail without it, elsewhere they print a note and return.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use distill_tests::http::{data, serve_mnist_copy, sha256_file, Mode, Server};
use distill_tests::{root, stderr, stdout};

fn shared(name: &str) -> Option<PathBuf> {
    distill_data::testing::required_dir("DISTILL_DATA", Some(name), "the upstream fetch test")
        .map(|d| d.join(name))
}

/// A fetched data set, for the checks after it.
struct Fetched {
    _tmp: tempfile::TempDir,
    data_dir: PathBuf,
    server: Server,
    card: Option<PathBuf>,
}

impl Fetched {
    fn dd(&self) -> &str {
        self.data_dir.to_str().unwrap()
    }

    fn fetch(&self, name: &str) -> Output {
        let mut args = vec![
            "fetch",
            name,
            "--data-dir",
            self.dd(),
            "--base-url",
            &self.server.url,
        ];
        let card = self.card.as_ref().map(|c| c.to_str().unwrap().to_string());
        if let Some(c) = &card {
            args.extend(["--card", c]);
        }
        data(&args)
    }
}

/// Makes the upstream copy of `name`, serves it, fetches it and checks the result three ways.
fn fetch_from_upstream_copy(name: &str) -> Option<Fetched> {
    let prepared = shared(name)?;
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    let remade =
        distill_fetch::testing::write_upstream(name, &prepared, &mirror.join(name)).unwrap();

    // every upstream file the copy makes exactly must have the real file's checksum; the others are pinned
    // from the copy in a card written for the test (with the card's shipped files beside it)
    let card_path = root().join("datasets").join(name).join("dataset.toml");
    let mut card: toml::Value =
        toml::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    let mut none = Vec::new();
    let ups = match card.get_mut("upstream").and_then(|u| u.as_array_mut()) {
        Some(u) => u,
        None => &mut none, // stsb: the upstream files are published as is ([[file]] with URLs)
    };
    for u in ups.iter_mut() {
        let file = u.get("name").and_then(|n| n.as_str()).unwrap().to_string();
        let served = mirror.join(name).join(&file);
        let sha = sha256_file(&served);
        let pinned = u
            .get("sha256")
            .and_then(|s| s.as_str())
            .unwrap()
            .to_string();
        if remade.contains(&file) {
            let t = u.as_table_mut().unwrap();
            t.insert("sha256".into(), toml::Value::String(sha));
            let len = std::fs::metadata(&served).unwrap().len();
            t.insert("size".into(), toml::Value::Integer(len as i64));
        } else {
            assert_eq!(
                sha, pinned,
                "{name}: upstream copy of {file} differs from the real file's checksum"
            );
        }
    }
    let card = if remade.is_empty() {
        None
    } else {
        let dir = tmp.path().join("card");
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(card_path.parent().unwrap()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let p = dir.join("dataset.toml");
        std::fs::write(&p, toml::to_string(&card).unwrap()).unwrap();
        Some(p)
    };
    let server = Server::start(&mirror, Mode::Files);
    let f = Fetched {
        data_dir: tmp.path().join("data"),
        _tmp: tmp,
        server,
        card,
    };
    let o = f.fetch(name);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    assert!(
        stdout(&o).contains("verified and in place"),
        "{}",
        stdout(&o)
    );

    // the built-in card verifies the result ...
    let o = data(&["verify", name, "--data-dir", f.dd()]);
    assert!(o.status.success(), "{name}: {}{}", stdout(&o), stderr(&o));
    // ... and so does coreutils against the prepared copy's own list
    let target = f.data_dir.join(name);
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet"])
        .arg(prepared.join("SHA256SUMS"))
        .current_dir(&target)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{name}: sha256sum -c: {}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        !f.data_dir.join(format!(".{name}.fetch")).exists(),
        "{name}: staging left behind"
    );
    Some(f)
}

#[test]
fn cora_from_the_planetoid_pickles_and_verify_names_each_bad_file() {
    let Some(f) = fetch_from_upstream_copy("cora") else {
        return;
    };
    let requests = f.server.seen().len();
    assert_eq!(requests, 9, "8 Planetoid files + linqs_cora.cites");

    // one file changed in place, one shortened, one removed: each is named with what is wrong
    let cora = f.data_dir.join("cora");
    let mut nodes = std::fs::read(cora.join("nodes.tsv")).unwrap();
    nodes[1000] ^= 1;
    std::fs::write(cora.join("nodes.tsv"), &nodes).unwrap();
    let edges = std::fs::read(cora.join("edges.tsv")).unwrap();
    std::fs::write(cora.join("edges.tsv"), &edges[..100]).unwrap();
    std::fs::remove_file(cora.join("split_val.txt")).unwrap();
    let o = data(&["verify", "cora", "--data-dir", f.dd()]);
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    for want in [
        format!("{}: sha256 mismatch", cora.join("nodes.tsv").display()),
        format!(
            "{}: wrong size: expected 48444 bytes, found 100",
            cora.join("edges.tsv").display()
        ),
        format!("{}: missing", cora.join("split_val.txt").display()),
    ] {
        assert!(out.contains(&want), "{want}\n{out}");
    }
    assert!(
        stderr(&o).contains("3 of 7 files failed verification"),
        "{}",
        stderr(&o)
    );

    // a second fetch rebuilds the folder from upstream, reusing the file that is published as is
    let o = f.fetch("cora");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("8 downloaded, 1 already there"),
        "{}",
        stdout(&o)
    );
    assert!(data(&["verify", "cora", "--data-dir", f.dd()])
        .status
        .success());
}

#[test]
fn fsdd_from_the_recordings_and_metadata_py() {
    let Some(f) = fetch_from_upstream_copy("fsdd") else {
        return;
    };
    assert_eq!(f.server.seen().len(), 3001, "3000 recordings + metadata.py");
}

#[test]
fn coco128_from_the_yolo_labels_and_coco_json() {
    let Some(f) = fetch_from_upstream_copy("coco128") else {
        return;
    };
    assert!(f
        .server
        .seen()
        .iter()
        .any(|s| s.path.ends_with("labels/val2017/000000000139.txt")));
}

#[test]
fn sst2_from_the_senteval_files() {
    let Some(f) = fetch_from_upstream_copy("sst2") else {
        return;
    };
    assert_eq!(f.card, None, "SentEval's files are reproduced exactly");
}

#[test]
fn stsb_from_the_original_csv_files() {
    let Some(f) = fetch_from_upstream_copy("stsb") else {
        return;
    };
    assert_eq!(f.card, None);
}

#[test]
fn mnist_from_the_published_gzip_files() {
    let Some(prepared) = shared("mnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = serve_mnist_copy(&prepared, &tmp.path().join("mirror"));
    let dd = tmp.path().join("data");
    let o = data(&[
        "fetch",
        "mnist",
        "--data-dir",
        dd.to_str().unwrap(),
        "--base-url",
        &server.url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = data(&["verify", "mnist", "--data-dir", dd.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet"])
        .arg(prepared.join("SHA256SUMS"))
        .current_dir(dd.join("mnist"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stdout(&check));
}

/// CIFAR's upstream is one tarball with only a published md5: a small stand-in (10 records per batch) in
/// the real layout, made with the system's `tar`, with a card pinning its md5 and the batch sizes.
#[test]
fn cifar10_tarball_unpacked_into_the_data_set_with_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src/cifar-10-batches-bin");
    std::fs::create_dir_all(&src).unwrap();
    let batches = [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ];
    for (i, b) in batches.iter().enumerate() {
        let bytes: Vec<u8> = (0..3073 * 10)
            .map(|j| ((j * 31 + i * 7) % 256) as u8)
            .collect();
        std::fs::write(src.join(format!("{b}.bin")), bytes).unwrap();
    }
    std::fs::write(src.join("batches.meta.txt"), "airplane\nautomobile\n").unwrap();
    let mirror = tmp.path().join("mirror/cifar10");
    std::fs::create_dir_all(&mirror).unwrap();
    let archive = mirror.join("cifar-10-binary.tar.gz");
    let t = Command::new("tar")
        .args(["czf"])
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path().join("src"))
        .arg("cifar-10-batches-bin")
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", stderr(&t));
    let md5 = String::from_utf8_lossy(
        &Command::new("md5sum")
            .arg(&archive)
            .output()
            .unwrap()
            .stdout,
    )[..32]
        .to_string();
    let mut card = std::fs::read_to_string(root().join("datasets/cifar10/dataset.toml")).unwrap();
    card = card.replace(
        "md5 = \"c32a1d4ab5d03f1284b67883e8d87530\"",
        &format!("md5 = \"{md5}\""),
    );
    card = card.replace("size = 30730000", "size = 30730");
    let card_path = tmp.path().join("cifar10.toml");
    std::fs::write(&card_path, card).unwrap();
    let server = Server::start(&tmp.path().join("mirror"), Mode::Files);
    let dd = tmp.path().join("data");
    let args = |cmd: &'static str| -> Vec<String> {
        let mut a = vec![
            cmd.to_string(),
            "cifar10".into(),
            "--data-dir".into(),
            dd.display().to_string(),
        ];
        a.extend(["--card".into(), card_path.display().to_string()]);
        if cmd == "fetch" {
            a.extend(["--base-url".into(), server.url.clone()]);
        }
        a
    };
    let run = |cmd: &'static str| {
        let a = args(cmd);
        data(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run("fetch");
    assert!(o.status.success(), "{}", stderr(&o));
    for b in batches {
        assert_eq!(
            std::fs::read(
                dd.join("cifar10/cifar-10-batches-bin")
                    .join(format!("{b}.bin"))
            )
            .unwrap(),
            std::fs::read(src.join(format!("{b}.bin"))).unwrap()
        );
    }
    assert!(
        !dd.join("cifar10/cifar-10-binary.tar.gz").exists(),
        "the tarball stays out of the data set"
    );
    let o = run("verify");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("6 of them against the checksums recorded"),
        "{}",
        stdout(&o)
    );
    // a batch changed after the fetch is caught by the manifest
    let p = dd.join("cifar10/cifar-10-batches-bin/data_batch_3.bin");
    let mut b = std::fs::read(&p).unwrap();
    b[5] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let o = run("verify");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).contains("data_batch_3.bin: sha256 mismatch"),
        "{}",
        stdout(&o)
    );
}

/// `distill run` on a recipe whose data set is missing names the fetch to run; with `--fetch` it fetches the
/// data set first (here from a loopback mirror of MNIST's published files) and then trains on it.
#[test]
fn run_names_the_missing_data_set_and_fetch_gets_it_first() {
    let Some(prepared) = shared("mnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = serve_mnist_copy(&prepared, &tmp.path().join("mirror"));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("r.toml"), distill_tests::tiny_recipe(1)).unwrap();

    let o = distill_tests::run_command(&work)
        .env_remove("DISTILL_DATA")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("data set `mnist` not found (the data dir data does not exist)")
            && err.contains("distill data fetch mnist --data-dir data")
            && err.contains("--fetch"),
        "{err}"
    );
    assert!(!work.join("data/mnist").exists());

    let o = distill_tests::run_command(&work)
        .arg("--fetch")
        .env_remove("DISTILL_DATA")
        .env("DISTILL_DATA_MIRROR", &server.url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("mnist: not in data; fetching it"),
        "{}",
        stderr(&o)
    );
    assert!(work.join("out/report.json").is_file());
    let o = data(&[
        "verify",
        "mnist",
        "--data-dir",
        work.join("data").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
