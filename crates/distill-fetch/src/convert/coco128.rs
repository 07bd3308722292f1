//! coco128: YOLO box labels (GitHub `lightly-ai/coco128_yolo`, `object_detection/labels`) back to COCO
//! detection JSON, `annotations/instances_{train,val}2017.json`.
//!
//! Inputs:
//! - `out/images/{train,val}2017/*.jpg` (downloaded directly from COCO): the image list of each split (sorted
//!   by file name; the COCO image id is the file stem) and each image's width/height (from the JPEG's SOF
//!   header).
//! - `sources/labels/{split}2017/<stem>.txt`: one `class cx cy w h` line per box (normalised); an image with
//!   no label file has no boxes (upstream has none for train 000000000250 and 000000000508).
//! - Per-image `license`, `coco_url`, `flickr_url`, `date_captured`: train from
//!   `out/annotations/instances_train2017_original_coco.json` (downloaded directly), val from
//!   `sources/panoptic_val2017.json` (covers 100 of the 128 val images; the others get `license: 0`,
//!   "unknown", and no url/date fields).
//!
//! Box rule: `x = (cx - w/2)·W`, `y = (cy - h/2)·H`, `w·W`, `h·H`, each rounded to 0.01 like Python's
//! `round(v, 2)`, a resulting `-0.0` written as `0.0`; `area` = the rounded width times the rounded height, rounded to 0.01; YOLO class k = the
//! k-th of the 80 COCO categories in id order. Annotation ids run 1..N per file in image order, then line
//! order. The JSON text is written as Python's `json.dumps(obj, separators=(",", ":"))` writes it (floats as
//! `repr`, ASCII only, no trailing newline).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The two splits, as named in the folder and file names.
pub const SPLITS: &[&str] = &["train2017", "val2017"];

/// The original train annotations file, downloaded directly into `out/` (source of the train images' fields).
pub const ORIGINAL_TRAIN_JSON: &str = "annotations/instances_train2017_original_coco.json";

/// The source with the val images' fields (lightly-ai/coco128_yolo
/// `panoptic_segmentation/annotations/panoptic_val2017.json`).
pub const PANOPTIC_VAL_JSON: &str = "panoptic_val2017.json";

/// The 8 COCO image licenses: (id, name, url).
pub const LICENSES: &[(i64, &str, &str)] = &[
    (
        1,
        "Attribution-NonCommercial-ShareAlike License",
        "http://creativecommons.org/licenses/by-nc-sa/2.0/",
    ),
    (
        2,
        "Attribution-NonCommercial License",
        "http://creativecommons.org/licenses/by-nc/2.0/",
    ),
    (
        3,
        "Attribution-NonCommercial-NoDerivs License",
        "http://creativecommons.org/licenses/by-nc-nd/2.0/",
    ),
    (
        4,
        "Attribution License",
        "http://creativecommons.org/licenses/by/2.0/",
    ),
    (
        5,
        "Attribution-ShareAlike License",
        "http://creativecommons.org/licenses/by-sa/2.0/",
    ),
    (
        6,
        "Attribution-NoDerivs License",
        "http://creativecommons.org/licenses/by-nd/2.0/",
    ),
    (
        7,
        "No known copyright restrictions",
        "http://flickr.com/commons/usage/",
    ),
    (
        8,
        "United States Government Work",
        "http://www.usa.gov/copyright.shtml",
    ),
];

/// The name of license id 0, used for images whose license id no source records.
pub const UNKNOWN_LICENSE: &str =
    "unknown (COCO image under one of the Flickr licenses above; id not recorded in the source)";

/// The 80 COCO detection categories in id order: (id, name, supercategory). YOLO class k is entry k.
pub const CATEGORIES: &[(i64, &str, &str)] = &[
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
];

/// The name of a split's label source for image `stem`: `labels/<split>/<stem>.txt`.
pub fn label_source_name(split: &str, stem: &str) -> String {
    format!("labels/{split}/{stem}.txt")
}

/// The `info` block's description of a split.
fn info_description(split: &str) -> String {
    format!(
        "coco128 {split} subset (first 128 images of COCO {split}); boxes converted from Ultralytics/Lightly YOLO labels"
    )
}

/// One image's fields from an upstream COCO-style JSON (`images[]`); other keys are ignored.
#[derive(Debug, Deserialize)]
pub struct UpstreamImage {
    /// COCO image id.
    pub id: u64,
    /// Bare file name, e.g. `000000000009.jpg`.
    pub file_name: String,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Flickr license id (1..8).
    pub license: i64,
    /// The image's URL at images.cocodataset.org.
    pub coco_url: String,
    /// The image's Flickr URL.
    pub flickr_url: String,
    /// When the photo was taken, as COCO records it.
    pub date_captured: String,
}

#[derive(Deserialize)]
struct UpstreamJson {
    images: Vec<UpstreamImage>,
}

/// Reads the `images` of an upstream COCO-style JSON file, keyed by image id.
pub fn read_upstream_images(path: &Path) -> Result<HashMap<u64, UpstreamImage>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed: UpstreamJson = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a COCO JSON with an `images` list", path.display()))?;
    let mut map = HashMap::with_capacity(parsed.images.len());
    for image in parsed.images {
        let id = image.id;
        if map.insert(id, image).is_some() {
            bail!(
                "{}: image id {id} appears twice in `images`",
                path.display()
            );
        }
    }
    Ok(map)
}

/// One YOLO label line: class index and normalised centre/size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YoloBox {
    /// Index into [`CATEGORIES`].
    pub class: usize,
    /// Centre x / image width.
    pub cx: f64,
    /// Centre y / image height.
    pub cy: f64,
    /// Box width / image width.
    pub w: f64,
    /// Box height / image height.
    pub h: f64,
}

/// Parses a YOLO label file's text (`class cx cy w h` per line, blank lines skipped); `what` names the file
/// in errors.
pub fn parse_yolo_labels(text: &str, what: &str) -> Result<Vec<YoloBox>> {
    let mut boxes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [class, cx, cy, w, h] = fields.as_slice() else {
            bail!(
                "{what}:{lineno}: expected 5 fields `class cx cy w h`, found {}: {line:?}",
                fields.len()
            );
        };
        let class: usize = class.parse().map_err(|_| {
            anyhow!("{what}:{lineno}: class {class:?} is not a non-negative integer")
        })?;
        if class >= CATEGORIES.len() {
            bail!(
                "{what}:{lineno}: class {class} out of range (the {} COCO classes are 0..{})",
                CATEGORIES.len(),
                CATEGORIES.len() - 1
            );
        }
        let mut vals = [0f64; 4];
        for (slot, (name, field)) in
            vals.iter_mut()
                .zip([("cx", cx), ("cy", cy), ("w", w), ("h", h)])
        {
            let v: f64 = field
                .parse()
                .map_err(|_| anyhow!("{what}:{lineno}: {name} {field:?} is not a number"))?;
            if !v.is_finite() {
                bail!("{what}:{lineno}: {name} {field:?} is not finite");
            }
            *slot = v;
        }
        let [cx, cy, w, h] = vals;
        boxes.push(YoloBox {
            class,
            cx,
            cy,
            w,
            h,
        });
    }
    Ok(boxes)
}

/// Python's `round(v, 2)`: the decimal nearest the exact binary value at 0.01 (ties to even), read back.
pub fn round2(v: f64) -> f64 {
    // `{:.2}` rounds the exact binary value correctly, ties to even, as CPython's round() does.
    format!("{v:.2}").parse().unwrap_or(v)
}

/// [`round2`], then a negative zero made positive (`-0.0 + 0.0 == +0.0`): a box edge a hair left of or above
/// the image (e.g. x = -0.000128) is written `0.0`, not Python's `-0.0`.
fn round2_pos0(v: f64) -> f64 {
    round2(v) + 0.0
}

/// A COCO box from a YOLO box on a `width`×`height` image: `([x, y, w, h], area)`, rounded as documented
/// in the module.
pub fn coco_box(b: &YoloBox, width: u32, height: u32) -> ([f64; 4], f64) {
    let (fw, fh) = (f64::from(width), f64::from(height));
    let x = round2_pos0((b.cx - b.w / 2.0) * fw);
    let y = round2_pos0((b.cy - b.h / 2.0) * fh);
    let w = round2_pos0(b.w * fw);
    let h = round2_pos0(b.h * fh);
    ([x, y, w, h], round2_pos0(w * h))
}

/// The pixel size `(width, height)` in a JPEG's first SOF header; `what` names the file in errors.
pub fn jpeg_size(bytes: &[u8], what: &str) -> Result<(u32, u32)> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8][..]) {
        bail!("{what}: not a JPEG (no SOI marker at the start)");
    }
    let mut pos = 2usize;
    loop {
        // A marker: one or more 0xFF fill bytes, then the marker code.
        if pos >= bytes.len() {
            bail!("{what}: ends at byte {pos}, before any SOF frame header");
        }
        if bytes.get(pos) != Some(&0xFF) {
            bail!("{what}: byte {pos}: expected a JPEG marker (0xFF) before any frame header");
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos) else {
            bail!("{what}: ends inside a marker at byte {pos}, before any frame header");
        };
        pos += 1;
        match code {
            // Stand-alone markers (no length): TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => {
                bail!("{what}: byte {pos}: image data begins before any SOF frame header")
            }
            _ => {}
        }
        let seg_len = match bytes.get(pos..pos + 2) {
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            _ => bail!("{what}: ends inside the length of marker 0xFF{code:02X} at byte {pos}"),
        };
        if seg_len < 2 {
            bail!("{what}: byte {pos}: marker 0xFF{code:02X} has a bad length {seg_len}");
        }
        // SOF0..SOF15, except DHT (C4), JPG (C8), DAC (CC).
        let is_sof = (0xC0..=0xCF).contains(&code) && !matches!(code, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let Some(&[_, _, _precision, h1, h0, w1, w0]) = bytes.get(pos..pos + 7) else {
                bail!("{what}: byte {pos}: SOF header cut short");
            };
            let (h, w) = (u16::from_be_bytes([h1, h0]), u16::from_be_bytes([w1, w0]));
            if w == 0 || h == 0 {
                bail!("{what}: byte {pos}: SOF header gives a {w}x{h} image");
            }
            return Ok((u32::from(w), u32::from(h)));
        }
        pos += seg_len;
    }
}

/// Python `repr(float)` (which `json.dumps` writes): shortest round-trip digits, `.0` on integral values,
/// exponent form below 1e-4 and from 1e16 on. Errors on NaN/infinity (not JSON).
pub fn py_float_repr(v: f64) -> Result<String> {
    if !v.is_finite() {
        bail!("{v} is not a finite number");
    }
    if v == 0.0 {
        return Ok(if v.is_sign_negative() { "-0.0" } else { "0.0" }.to_string());
    }
    // `{:e}` gives the shortest round-trip digits: `[-]d[.ddd]e<exp>`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci
        .split_once('e')
        .ok_or_else(|| anyhow!("unexpected float format {sci:?}"))?;
    let exp: i32 = exp
        .parse()
        .with_context(|| format!("unexpected float format {sci:?}"))?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let mut s = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            s.push_str(&"0".repeat((-exp - 1) as usize));
            s.push_str(&digits);
        } else if exp + 1 >= n {
            s.push_str(&digits);
            s.push_str(&"0".repeat((exp + 1 - n) as usize));
            s.push_str(".0");
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            s.push_str(int);
            s.push('.');
            s.push_str(frac);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        s.push_str(first);
        if !rest.is_empty() {
            s.push('.');
            s.push_str(rest);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    Ok(s)
}

/// Appends `text` as a JSON string the way Python's `json.dumps` (ensure_ascii) writes it.
pub fn push_py_json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// One image of the converted file.
struct Image {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    upstream: Option<UpstreamImage>,
    boxes: Vec<YoloBox>,
}

/// The `*.jpg` file names in `dir`, sorted.
fn list_jpegs(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: file name {name:?} is not UTF-8", dir.display());
        };
        if name.ends_with(".jpg") {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        bail!("{}: no .jpg images", dir.display());
    }
    names.sort();
    Ok(names)
}

/// Collects a split's images and boxes.
fn read_split(
    split: &str,
    sources: &Path,
    out: &Path,
    mut upstream: HashMap<u64, UpstreamImage>,
    upstream_path: &Path,
) -> Result<Vec<Image>> {
    let image_dir = out.join("images").join(split);
    let mut images = Vec::new();
    for name in list_jpegs(&image_dir)? {
        let path = image_dir.join(&name);
        let stem = name.trim_end_matches(".jpg");
        let id: u64 = stem
            .parse()
            .map_err(|_| anyhow!("{}: file stem is not a COCO image id", path.display()))?;
        let jpeg = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (width, height) = jpeg_size(&jpeg, &path.display().to_string())?;
        let up = upstream.remove(&id);
        if let Some(up) = &up {
            if up.file_name != name || up.width != width || up.height != height {
                bail!(
                    "{}: image id {id} is {} {}x{} there, but {} is {width}x{height}",
                    upstream_path.display(),
                    up.file_name,
                    up.width,
                    up.height,
                    path.display()
                );
            }
        }
        let label: PathBuf = sources.join(label_source_name(split, stem));
        let boxes = match fs::read(&label) {
            Ok(bytes) => {
                let what = label.display().to_string();
                let text =
                    String::from_utf8(bytes).map_err(|_| anyhow!("{what}: not UTF-8 text"))?;
                parse_yolo_labels(&text, &what)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", label.display())),
        };
        images.push(Image {
            id,
            file_name: format!("images/{split}/{name}"),
            width,
            height,
            upstream: up,
            boxes,
        });
    }
    Ok(images)
}

/// The converted JSON text of a split.
fn split_json(split: &str, images: &[Image]) -> Result<String> {
    let mut s = String::with_capacity(1 << 18);
    s.push_str("{\"info\":{\"description\":");
    push_py_json_str(&mut s, &info_description(split));
    s.push_str(",\"version\":\"1.0\",\"year\":2017,\"contributor\":");
    push_py_json_str(
        &mut s,
        "COCO Consortium; subset via lightly-ai/coco128_yolo",
    );
    s.push_str("},\"licenses\":[");
    for (id, name, url) in LICENSES {
        s.push_str("{\"url\":");
        push_py_json_str(&mut s, url);
        let _ = write!(s, ",\"id\":{id},\"name\":");
        push_py_json_str(&mut s, name);
        s.push_str("},");
    }
    s.push_str("{\"id\":0,\"name\":");
    push_py_json_str(&mut s, UNKNOWN_LICENSE);
    s.push_str(",\"url\":\"\"}],\"categories\":[");
    for (i, (id, name, supercategory)) in CATEGORIES.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"id\":{id},\"name\":");
        push_py_json_str(&mut s, name);
        s.push_str(",\"supercategory\":");
        push_py_json_str(&mut s, supercategory);
        s.push('}');
    }
    s.push_str("],\"images\":[");
    for (i, im) in images.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"id\":{},\"file_name\":", im.id);
        push_py_json_str(&mut s, &im.file_name);
        let _ = write!(s, ",\"width\":{},\"height\":{}", im.width, im.height);
        match &im.upstream {
            Some(up) => {
                let _ = write!(s, ",\"license\":{},\"coco_url\":", up.license);
                push_py_json_str(&mut s, &up.coco_url);
                s.push_str(",\"flickr_url\":");
                push_py_json_str(&mut s, &up.flickr_url);
                s.push_str(",\"date_captured\":");
                push_py_json_str(&mut s, &up.date_captured);
            }
            None => s.push_str(",\"license\":0"),
        }
        s.push('}');
    }
    s.push_str("],\"annotations\":[");
    let mut ann_id = 0u64;
    for im in images {
        for b in &im.boxes {
            let (bbox, area) = coco_box(b, im.width, im.height);
            let category = CATEGORIES
                .get(b.class)
                .ok_or_else(|| anyhow!("class {} out of range", b.class))?
                .0;
            if ann_id > 0 {
                s.push(',');
            }
            ann_id += 1;
            let _ = write!(
                s,
                "{{\"id\":{ann_id},\"image_id\":{},\"category_id\":{category},\"bbox\":[",
                im.id
            );
            for (k, v) in bbox.iter().enumerate() {
                if k > 0 {
                    s.push(',');
                }
                s.push_str(
                    &py_float_repr(*v)
                        .with_context(|| format!("{split} image {}: box {ann_id}", im.file_name))?,
                );
            }
            s.push_str("],\"area\":");
            s.push_str(&py_float_repr(area)?);
            s.push_str(",\"iscrowd\":0}");
        }
    }
    s.push_str("]}");
    Ok(s)
}

/// Converts the upstream files in `sources` into the data set's layout in `out`.
pub fn convert(sources: &Path, out: &Path) -> Result<()> {
    let annotations = out.join("annotations");
    fs::create_dir_all(&annotations)
        .with_context(|| format!("creating {}", annotations.display()))?;
    for split in SPLITS {
        let meta_path = if *split == "train2017" {
            out.join(ORIGINAL_TRAIN_JSON)
        } else {
            sources.join(PANOPTIC_VAL_JSON)
        };
        let meta = read_upstream_images(&meta_path)?;
        let images = read_split(split, sources, out, meta, &meta_path)?;
        let json = split_json(split, &images)?;
        let dest = annotations.join(format!("instances_{split}.json"));
        fs::write(&dest, json).with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_lines_parse() {
        let boxes = parse_yolo_labels(
            "45 0.479492 0.688771 0.955609 0.5955\n\n0 0.5 0.5 1 1\n",
            "t.txt",
        )
        .unwrap();
        assert_eq!(boxes.len(), 2);
        assert_eq!(boxes[0].class, 45);
        assert_eq!(boxes[0].cx, 0.479492);
        assert_eq!(
            boxes[1],
            YoloBox {
                class: 0,
                cx: 0.5,
                cy: 0.5,
                w: 1.0,
                h: 1.0
            }
        );
        assert!(parse_yolo_labels("", "t.txt").unwrap().is_empty());
    }

    #[test]
    fn yolo_malformed_lines_name_file_and_line() {
        let cases = [
            ("0 0.5 0.5 0.1\n", "t.txt:1: expected 5 fields"),
            (
                "0 0.5 0.5 0.1 0.1\n1 0.5 x 0.1 0.1\n",
                "t.txt:2: cy \"x\" is not a number",
            ),
            ("80 0.5 0.5 0.1 0.1\n", "t.txt:1: class 80 out of range"),
            ("-1 0.5 0.5 0.1 0.1\n", "t.txt:1: class \"-1\" is not"),
            ("0 0.5 0.5 inf 0.1\n", "t.txt:1: w \"inf\" is not finite"),
            ("0 0.5 0.5 0.1 0.1 7\n", "t.txt:1: expected 5 fields"),
        ];
        for (text, want) in cases {
            let err = parse_yolo_labels(text, "t.txt").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn boxes_round_like_python() {
        // 000000000009.jpg (640x480), first label line; the original COCO box is [1.08, 187.69, 611.59, 285.84].
        let b = YoloBox {
            class: 45,
            cx: 0.479492,
            cy: 0.688771,
            w: 0.955609,
            h: 0.5955,
        };
        let (bbox, area) = coco_box(&b, 640, 480);
        assert_eq!(bbox, [1.08, 187.69, 611.59, 285.84]);
        assert_eq!(area, 174816.89);
        // 000000000089.jpg line 1: x = -0.000128 rounds to -0.0, written as 0.0.
        let b = YoloBox {
            class: 68,
            cx: 0.0923438,
            cy: 0.241927,
            w: 0.184688,
            h: 0.301896,
        };
        let (bbox, _) = coco_box(&b, 640, 480);
        assert_eq!(py_float_repr(bbox[0]).unwrap(), "0.0");
        // Exact binary ties round to even like CPython's round(): 0.125 -> 0.12, 0.375 -> 0.38.
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.375), 0.38);
        assert_eq!(round2(2.675), 2.67); // 2.675 is 2.67499999... in binary
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (640.0, "640.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (187.69, "187.69"),
            (174816.89, "174816.89"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e22, "1.25e+22"),
            (-3.5, "-3.5"),
        ];
        for (v, want) in cases {
            assert_eq!(py_float_repr(v).unwrap(), want, "{v}");
        }
        assert!(py_float_repr(f64::NAN).is_err());
    }

    #[test]
    fn strings_escape_like_python_json() {
        let mut s = String::new();
        push_py_json_str(&mut s, "a\"b\\c\nd\u{7f}é😀");
        assert_eq!(s, r#""a\"b\\c\nd\u007f\u00e9\ud83d\ude00""#);
    }

    /// A minimal JPEG header: SOI, APP0 (JFIF stub), DQT-ish filler, SOF0 for `w`x`h`.
    fn jpeg_header(w: u16, h: u16, sof: u8) -> Vec<u8> {
        let mut b = vec![
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, b'J', b'F', 0xFF, 0xFF, sof, 0x00, 0x11, 8,
        ];
        b.extend(h.to_be_bytes());
        b.extend(w.to_be_bytes());
        b.extend([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        b
    }

    #[test]
    fn jpeg_sizes_from_sof() {
        assert_eq!(
            jpeg_size(&jpeg_header(640, 480, 0xC0), "a.jpg").unwrap(),
            (640, 480)
        );
        assert_eq!(
            jpeg_size(&jpeg_header(427, 640, 0xC2), "a.jpg").unwrap(),
            (427, 640)
        );
        // DHT (C4) is not a frame header: skipped.
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xC4, 0x00, 0x03, 0x00];
        b.extend(&jpeg_header(10, 20, 0xC1)[2..]);
        assert_eq!(jpeg_size(&b, "a.jpg").unwrap(), (10, 20));
    }

    #[test]
    fn jpeg_malformed_is_an_error() {
        let cases: [(&[u8], &str); 5] = [
            (b"GIF89a", "a.jpg: not a JPEG"),
            (&[0xFF, 0xD8], "a.jpg: ends at byte 2, before any SOF"),
            (
                &[0xFF, 0xD8, 0xFF, 0xE0, 0x00],
                "a.jpg: ends inside the length",
            ),
            (
                &[0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 8, 0],
                "a.jpg: byte 4: SOF header cut short",
            ),
            (&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02], "before any SOF"),
        ];
        for (bytes, want) in cases {
            let err = jpeg_size(bytes, "a.jpg").unwrap_err().to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
        // A segment length pointing past the end: no panic, an error.
        let err = jpeg_size(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 0], "a.jpg").unwrap_err();
        assert!(err.to_string().contains("a.jpg"), "{err}");
    }

    #[test]
    fn upstream_json_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        fs::write(&p, r#"{"images": [{"id": 1, "file_name": "x.jpg"}]}"#).unwrap();
        let err = format!("{:#}", read_upstream_images(&p).unwrap_err());
        assert!(
            err.contains("p.json") && err.contains("missing field"),
            "{err}"
        );
        fs::write(&p, "{\"images\": [").unwrap();
        let err = format!("{:#}", read_upstream_images(&p).unwrap_err());
        assert!(err.contains("p.json") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn convert_small_split() {
        let dir = tempfile::tempdir().unwrap();
        let (sources, out) = (dir.path().join("src"), dir.path().join("out"));
        for split in SPLITS {
            fs::create_dir_all(out.join("images").join(split)).unwrap();
            fs::create_dir_all(sources.join("labels").join(split)).unwrap();
        }
        fs::create_dir_all(out.join("annotations")).unwrap();
        fs::write(
            out.join("images/train2017/000000000009.jpg"),
            jpeg_header(640, 480, 0xC0),
        )
        .unwrap();
        fs::write(
            out.join("images/train2017/000000000010.jpg"),
            jpeg_header(100, 50, 0xC0),
        )
        .unwrap();
        fs::write(
            out.join("images/val2017/000000000139.jpg"),
            jpeg_header(640, 426, 0xC0),
        )
        .unwrap();
        fs::write(
            sources.join("labels/train2017/000000000009.txt"),
            "45 0.479492 0.688771 0.955609 0.5955\n0 0.5 0.5 1 1\n",
        )
        .unwrap();
        fs::write(
            sources.join("labels/val2017/000000000139.txt"),
            "0 0.5 0.5 0.5 0.5\n",
        )
        .unwrap();
        let meta = r#"{"images":[{"license":3,"file_name":"000000000009.jpg","coco_url":"c","height":480,"width":640,"date_captured":"d","flickr_url":"f","id":9}]}"#;
        fs::write(out.join(ORIGINAL_TRAIN_JSON), meta).unwrap();
        fs::write(sources.join(PANOPTIC_VAL_JSON), r#"{"images":[]}"#).unwrap();
        convert(&sources, &out).unwrap();
        let train = fs::read_to_string(out.join("annotations/instances_train2017.json")).unwrap();
        assert!(train.contains(r#""images":[{"id":9,"file_name":"images/train2017/000000000009.jpg","width":640,"height":480,"license":3,"coco_url":"c","flickr_url":"f","date_captured":"d"},{"id":10,"file_name":"images/train2017/000000000010.jpg","width":100,"height":50,"license":0}]"#), "{train}");
        assert!(train.ends_with(r#""annotations":[{"id":1,"image_id":9,"category_id":51,"bbox":[1.08,187.69,611.59,285.84],"area":174816.89,"iscrowd":0},{"id":2,"image_id":9,"category_id":1,"bbox":[0.0,0.0,640.0,480.0],"area":307200.0,"iscrowd":0}]}"#), "{train}");
        let val = fs::read_to_string(out.join("annotations/instances_val2017.json")).unwrap();
        assert!(val.ends_with(r#""annotations":[{"id":1,"image_id":139,"category_id":1,"bbox":[160.0,106.5,320.0,213.0],"area":68160.0,"iscrowd":0}]}"#), "{val}");

        // Upstream size disagreeing with the JPEG: an error naming both.
        let meta = meta.replace("\"height\":480", "\"height\":481");
        fs::write(out.join(ORIGINAL_TRAIN_JSON), meta).unwrap();
        let err = format!("{:#}", convert(&sources, &out).unwrap_err());
        assert!(
            err.contains("instances_train2017_original_coco.json") && err.contains("640x481"),
            "{err}"
        );

        // A bad label line: the error names the label file and line.
        fs::write(out.join(ORIGINAL_TRAIN_JSON), r#"{"images":[]}"#).unwrap();
        fs::write(sources.join("labels/train2017/000000000010.txt"), "1 0.5\n").unwrap();
        let err = format!("{:#}", convert(&sources, &out).unwrap_err());
        assert!(
            err.contains("000000000010.txt:1: expected 5 fields"),
            "{err}"
        );
    }
}
