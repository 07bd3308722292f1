//! coco128 upstream-format copy: the prepared `annotations/instances_{train,val}2017.json` back to the YOLO
//! label files of GitHub `lightly-ai/coco128_yolo` (`labels/<split>/<stem>.txt`, written as Ultralytics'
//! `general_json2yolo` wrote them: `x + w/2`, `y + h/2` then divided by the image size, each number `%g`;
//! byte-identical to upstream), a minimal `panoptic_val2017.json` (only the `images` fields the conversion
//! reads: not the upstream bytes), and the directly downloaded files copied (the JPEGs and
//! `annotations/instances_train2017_original_coco.json`). Images without boxes get no label file, as
//! upstream.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::convert::coco128::{
    label_source_name, push_py_json_str, CATEGORIES, ORIGINAL_TRAIN_JSON, PANOPTIC_VAL_JSON, SPLITS,
};

#[derive(Deserialize)]
struct Prepared {
    images: Vec<PreparedImage>,
    annotations: Vec<PreparedAnnotation>,
}

#[derive(Deserialize)]
struct PreparedImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    license: i64,
    coco_url: Option<String>,
    flickr_url: Option<String>,
    date_captured: Option<String>,
}

#[derive(Deserialize)]
struct PreparedAnnotation {
    image_id: u64,
    category_id: i64,
    bbox: [f64; 4],
}

/// C's `printf("%g", v)` (6 significant digits, trailing zeros dropped, exponent form below 1e-4 and from
/// 1e6 on), as Python's `'%g' % v` writes it.
pub fn c_fmt_g(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = format!("{v:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let strip = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exp) {
        strip(&format!("{v:.*}", (5 - exp) as usize))
    } else {
        format!(
            "{}e{}{:02}",
            strip(mantissa),
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// The YOLO label text of one image's boxes on a `width`×`height` image.
fn yolo_text(boxes: &[&PreparedAnnotation], width: u32, height: u32, what: &str) -> Result<String> {
    let (fw, fh) = (f64::from(width), f64::from(height));
    let mut text = String::new();
    for a in boxes {
        let class = CATEGORIES
            .iter()
            .position(|c| c.0 == a.category_id)
            .ok_or_else(|| {
                anyhow!(
                    "{what}: category_id {} is not a COCO detection class",
                    a.category_id
                )
            })?;
        let [x, y, w, h] = a.bbox;
        let vals = [(x + w / 2.0) / fw, (y + h / 2.0) / fh, w / fw, h / fh];
        text.push_str(&class.to_string());
        for v in vals {
            text.push(' ');
            text.push_str(&c_fmt_g(v));
        }
        text.push('\n');
    }
    Ok(text)
}

/// A minimal panoptic JSON: `{"images":[...]}` with the upstream key order of each image.
fn panoptic_json(images: &[PreparedImage]) -> String {
    let mut s = String::from("{\"images\": [");
    let mut first = true;
    for im in images {
        let (Some(coco_url), Some(flickr_url), Some(date)) =
            (&im.coco_url, &im.flickr_url, &im.date_captured)
        else {
            continue;
        };
        if !first {
            s.push_str(", ");
        }
        first = false;
        let bare = im.file_name.rsplit('/').next().unwrap_or(&im.file_name);
        s.push_str(&format!("{{\"license\": {}, \"file_name\": ", im.license));
        push_py_json_str(&mut s, bare);
        s.push_str(", \"coco_url\": ");
        push_py_json_str(&mut s, coco_url);
        s.push_str(&format!(
            ", \"height\": {}, \"width\": {}, \"date_captured\": ",
            im.height, im.width
        ));
        push_py_json_str(&mut s, date);
        s.push_str(", \"flickr_url\": ");
        push_py_json_str(&mut s, flickr_url);
        s.push_str(&format!(", \"id\": {}}}", im.id));
    }
    s.push_str("]}");
    s
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_file(to, &bytes)
}

/// Writes the upstream files of the prepared data set in `prepared` into `mirror` (= MIRROR/NAME/).
pub fn write_upstream(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    for split in SPLITS {
        let path = prepared.join(format!("annotations/instances_{split}.json"));
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let data: Prepared = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        let mut by_image: HashMap<u64, Vec<&PreparedAnnotation>> = HashMap::new();
        for a in &data.annotations {
            by_image.entry(a.image_id).or_default().push(a);
        }
        for im in &data.images {
            let Some(stem) = im
                .file_name
                .strip_prefix(&format!("images/{split}/"))
                .and_then(|n| n.strip_suffix(".jpg"))
            else {
                bail!(
                    "{}: image {}: unexpected file_name {:?}",
                    path.display(),
                    im.id,
                    im.file_name
                );
            };
            copy_file(&prepared.join(&im.file_name), &mirror.join(&im.file_name))?;
            if let Some(boxes) = by_image.get(&im.id) {
                let name = label_source_name(split, stem);
                let text = yolo_text(
                    boxes,
                    im.width,
                    im.height,
                    &format!("{} image {}", path.display(), im.id),
                )?;
                write_file(&mirror.join(name), text.as_bytes())?;
            }
        }
        if *split == "val2017" {
            write_file(
                &mirror.join(PANOPTIC_VAL_JSON),
                panoptic_json(&data.images).as_bytes(),
            )?;
        }
    }
    copy_file(
        &prepared.join(ORIGINAL_TRAIN_JSON),
        &mirror.join(ORIGINAL_TRAIN_JSON),
    )?;
    Ok(vec![PANOPTIC_VAL_JSON.to_string()])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn percent_g_like_c() {
        let cases = [
            (0.479492, "0.479492"),
            (0.0969375, "0.0969375"),
            (0.5955, "0.5955"),
            (0.5, "0.5"),
            (1.0, "1"),
            (0.0, "0"),
            (0.00012345678, "0.000123457"),
            (0.000012345, "1.2345e-05"),
            (123456.5, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.9999999, "1"),
        ];
        for (v, want) in cases {
            assert_eq!(c_fmt_g(v), want, "{v}");
        }
    }

    #[test]
    fn yolo_text_inverts_the_conversion() {
        // 000000000009.jpg (640x480): COCO box -> the upstream label line.
        let a = PreparedAnnotation {
            image_id: 9,
            category_id: 51,
            bbox: [1.08, 187.69, 611.59, 285.84],
        };
        assert_eq!(
            yolo_text(&[&a], 640, 480, "t").unwrap(),
            "45 0.479492 0.688771 0.955609 0.5955\n"
        );
        let bad = PreparedAnnotation {
            image_id: 9,
            category_id: 12,
            bbox: [0.0, 0.0, 1.0, 1.0],
        };
        let err = yolo_text(&[&bad], 640, 480, "t").unwrap_err().to_string();
        assert!(err.contains("category_id 12"), "{err}");
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }

    /// The prepared `$DISTILL_DATA/coco128`, or `None` (with the reason on stderr) when it is missing outside CI.
    fn prepared_dir() -> Option<PathBuf> {
        distill_data::testing::required_dir(
            "DISTILL_DATA",
            Some("coco128"),
            "the coco128 round trip",
        )
        .map(|d| d.join("coco128"))
    }

    /// write_upstream then convert gives every file of the prepared folder byte for byte; every source the
    /// writer claims to reproduce matches the card's size and sha256 of the real upstream file.
    #[test]
    fn round_trip_on_prepared_data() {
        let Some(prepared) = prepared_dir() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let (mirror, out) = (tmp.path().join("mirror"), tmp.path().join("out"));
        let not_identical = write_upstream(&prepared, &mirror).unwrap();
        assert_eq!(not_identical, [PANOPTIC_VAL_JSON]);

        // The card's sources: exactly the label files and the panoptic JSON written here.
        let card_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/coco128/dataset.toml");
        let card: toml::Value = toml::from_str(&fs::read_to_string(&card_path).unwrap()).unwrap();
        let sources = card
            .get("upstream")
            .and_then(|s| s.as_array())
            .expect("card has [[upstream]]");
        let mut card_names = Vec::new();
        for s in sources {
            let name = s["name"].as_str().unwrap();
            card_names.push(name.to_string());
            if not_identical.iter().any(|n| n == name) {
                continue;
            }
            let bytes = fs::read(mirror.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                bytes.len() as i64,
                s["size"].as_integer().unwrap(),
                "{name}: size"
            );
            assert_eq!(
                sha256_hex(&bytes),
                s["sha256"].as_str().unwrap(),
                "{name}: sha256"
            );
        }
        let mut written = Vec::new();
        files_under(&mirror, &mirror, &mut written);
        let mut written_sources: Vec<String> = written
            .iter()
            .filter(|n| n.starts_with("labels/") || *n == PANOPTIC_VAL_JSON)
            .cloned()
            .collect();
        written_sources.sort();
        card_names.sort();
        assert_eq!(
            written_sources, card_names,
            "card [[upstream]] names vs files written"
        );

        // The directly downloaded files go to out/ (as the fetcher leaves them); the sources stay in mirror/.
        for name in &written {
            if name.starts_with("images/") || name == ORIGINAL_TRAIN_JSON {
                copy_file(&mirror.join(name), &out.join(name)).unwrap();
            }
        }
        crate::convert::coco128::convert(&mirror, &out).unwrap();

        let sums = fs::read_to_string(prepared.join("SHA256SUMS")).unwrap();
        let want: BTreeMap<&str, &str> = sums
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(sum, name)| (name, sum))
            .collect();
        let mut produced = Vec::new();
        files_under(&out, &out, &mut produced);
        produced.sort();
        assert_eq!(
            produced,
            want.keys().copied().collect::<Vec<_>>(),
            "files vs SHA256SUMS"
        );
        for name in &produced {
            let got = sha256_hex(&fs::read(out.join(name)).unwrap());
            assert_eq!(got, want[name.as_str()], "{name}");
        }
    }
}
