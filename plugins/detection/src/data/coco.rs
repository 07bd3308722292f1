//! COCO detection JSON: `images`, `annotations` (boxes `[x, y, w, h]` in pixels), `categories`.
//!
//! [`parse_coco`] reads and checks a file: malformed JSON is reported with its line and column; a
//! structural mistake (an annotation naming an image or category that the file does not define, a box with
//! a non-positive size or outside its image, a repeated id) with the annotation's id. Extra fields
//! (`info`, `licenses`, `segmentation`, `coco_url`, …) are allowed and ignored.
//!
//! ```
//! let text = r#"{"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
//!               "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 12]}],
//!               "categories": [{"id": 3, "name": "three"}]}"#;
//! let coco = distill_detection::data::coco::parse_coco(text, "gt.json".as_ref()).unwrap();
//! assert_eq!(coco.annotations[0].area, 120.0);
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use distill_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::GroundTruth;

/// How far (pixels) a box may reach past its image before it is an error; boxes within this are clipped.
/// COCO's own boxes are stored rounded, so a box may end a fraction of a pixel past the border.
pub const BOX_TOLERANCE: f64 = 1.0;

/// An image entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    /// Image id.
    pub id: u64,
    /// File name, relative to the image root.
    pub file_name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// An annotation (one box).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Annotation id.
    pub id: u64,
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Area for the COCO area ranges (the segment's area in COCO); `w·h` when absent.
    #[serde(default)]
    pub area: f64,
    /// 1 for a crowd region.
    #[serde(default)]
    pub iscrowd: u8,
}

/// A category entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: u64,
    /// Name.
    pub name: String,
}

/// A checked COCO detection file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoFile {
    /// Images, in file order.
    pub images: Vec<CocoImage>,
    /// Annotations, in file order.
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    /// Categories, in file order.
    pub categories: Vec<CocoCategory>,
}

impl CocoFile {
    /// The annotations as ground truth for [`crate::metrics::coco_eval`].
    pub fn ground_truth(&self) -> Vec<GroundTruth> {
        self.annotations
            .iter()
            .map(|a| GroundTruth {
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area,
                iscrowd: a.iscrowd != 0,
            })
            .collect()
    }

    /// Category ids, sorted.
    pub fn category_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.categories.iter().map(|c| c.id).collect();
        v.sort_unstable();
        v
    }

    /// Image ids, sorted.
    pub fn image_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.images.iter().map(|c| c.id).collect();
        v.sort_unstable();
        v
    }

    /// The annotations of each image id.
    pub fn by_image(&self) -> BTreeMap<u64, Vec<&CocoAnnotation>> {
        let mut m: BTreeMap<u64, Vec<&CocoAnnotation>> = BTreeMap::new();
        for a in &self.annotations {
            m.entry(a.image_id).or_default().push(a);
        }
        m
    }

    /// Writes the file as COCO JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a COCO file serialises")
    }
}

/// Reads and checks the COCO JSON file at `path`.
pub fn load_coco(path: &Path) -> Result<CocoFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_coco(&text, path)
}

/// Parses and checks COCO JSON `text` (read from `path`, named in errors).
pub fn parse_coco(text: &str, path: &Path) -> Result<CocoFile> {
    if text.trim().is_empty() {
        return Err(Error::data(
            path,
            "is empty (expected a COCO JSON object with `images`, `annotations` and `categories`)",
        ));
    }
    let mut file: CocoFile = serde_json::from_str(text).map_err(|e| {
        Error::data(
            path,
            format!(
                "line {} column {}: {} (expected COCO detection JSON)",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            ),
        )
    })?;
    let mut images: BTreeMap<u64, &CocoImage> = BTreeMap::new();
    for im in &file.images {
        if images.insert(im.id, im).is_some() {
            return Err(Error::data(
                path,
                format!("image id {} appears twice in `images`", im.id),
            ));
        }
        if im.width == 0 || im.height == 0 {
            return Err(Error::data(
                path,
                format!(
                    "image id {} ({}) has size {}x{}",
                    im.id, im.file_name, im.width, im.height
                ),
            ));
        }
    }
    let mut cats = BTreeSet::new();
    for c in &file.categories {
        if !cats.insert(c.id) {
            return Err(Error::data(
                path,
                format!("category id {} appears twice in `categories`", c.id),
            ));
        }
    }
    let known_cats = || {
        let v: Vec<String> = cats.iter().take(20).map(|c| c.to_string()).collect();
        v.join(", ")
    };
    let mut ann_ids = BTreeSet::new();
    let mut clipped = Vec::new();
    for (i, a) in file.annotations.iter().enumerate() {
        let at = format!("annotation id {} (#{i} in `annotations`)", a.id);
        if !ann_ids.insert(a.id) {
            return Err(Error::data(path, format!("{at}: the id appears twice")));
        }
        let im = images.get(&a.image_id).ok_or_else(|| {
            Error::data(
                path,
                format!("{at}: image_id {} is not in `images`", a.image_id),
            )
        })?;
        if !cats.contains(&a.category_id) {
            return Err(Error::data(
                path,
                format!(
                    "{at}: unknown category_id {} (the file's categories: {})",
                    a.category_id,
                    known_cats()
                ),
            ));
        }
        let [x, y, w, h] = a.bbox;
        if !a.bbox.iter().all(|v| v.is_finite()) || w <= 0.0 || h <= 0.0 {
            return Err(Error::data(
                path,
                format!(
                    "{at}: box {:?} must have finite coordinates and a positive width and height",
                    a.bbox
                ),
            ));
        }
        let (iw, ih) = (im.width as f64, im.height as f64);
        if x < -BOX_TOLERANCE
            || y < -BOX_TOLERANCE
            || x + w > iw + BOX_TOLERANCE
            || y + h > ih + BOX_TOLERANCE
        {
            return Err(Error::data(
                path,
                format!(
                    "{at}: box [x, y, w, h] = {:?} lies outside its image {} ({} x {} pixels)",
                    a.bbox, im.file_name, im.width, im.height
                ),
            ));
        }
        if x < 0.0 || y < 0.0 || x + w > iw || y + h > ih {
            clipped.push(i);
        }
    }
    for i in clipped {
        let a = &mut file.annotations[i];
        let im = images[&a.image_id];
        let [x, y, w, h] = a.bbox;
        let (x0, y0) = (x.max(0.0), y.max(0.0));
        let (x1, y1) = ((x + w).min(im.width as f64), (y + h).min(im.height as f64));
        a.bbox = [x0, y0, (x1 - x0).max(0.0), (y1 - y0).max(0.0)];
    }
    for a in &mut file.annotations {
        if a.area <= 0.0 {
            a.area = a.bbox[2] * a.bbox[3];
        }
    }
    Ok(file)
}

/// serde_json appends " at line L column C"; the error already leads with them.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_coco(text, Path::new("ann.json"))
            .unwrap_err()
            .to_string()
    }

    const HEAD: &str = r#"{"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
 "categories": [{"id": 3, "name": "three"}, {"id": 5, "name": "five"}],
 "annotations": ["#;

    #[test]
    fn bad_files_name_the_line_or_the_annotation() {
        let e = err("");
        assert!(e.starts_with("ann.json: is empty"), "{e}");
        let e = err("{\"images\": [\n  {\"id\": 1,, }\n]}");
        assert!(e.contains("ann.json: line 2 column"), "{e}");
        let e = err(r#"{"images": []}"#);
        assert!(e.contains("missing field `categories`"), "{e}");
        let e = err(&format!(
            "{HEAD}{{\"id\": 9, \"image_id\": 1, \"category_id\": 4, \"bbox\": [1, 1, 5, 5]}}]}}"
        ));
        assert!(
            e.contains("annotation id 9")
                && e.contains("unknown category_id 4")
                && e.contains("3, 5"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}{{\"id\": 7, \"image_id\": 1, \"category_id\": 3, \"bbox\": [60, 1, 10, 5]}}]}}"
        ));
        assert!(
            e.contains("annotation id 7") && e.contains("outside its image a.png (64 x 48"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}{{\"id\": 2, \"image_id\": 8, \"category_id\": 3, \"bbox\": [1, 1, 5, 5]}}]}}"
        ));
        assert!(
            e.contains("annotation id 2") && e.contains("image_id 8"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}{{\"id\": 2, \"image_id\": 1, \"category_id\": 3, \"bbox\": [1, 1, 0, 5]}}]}}"
        ));
        assert!(e.contains("positive width"), "{e}");
        let e = err(&format!(
            "{HEAD}{{\"id\": 2, \"image_id\": 1, \"category_id\": 3, \"bbox\": [1, 1, 5]}}]}}"
        ));
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn boxes_a_hair_outside_are_clipped() {
        let f = parse_coco(
            &format!(
                "{HEAD}{{\"id\": 2, \"image_id\": 1, \"category_id\": 3, \"bbox\": [-0.5, 40, 10, 8.5]}}]}}"
            ),
            Path::new("ann.json"),
        )
        .unwrap();
        assert_eq!(f.annotations[0].bbox, [0.0, 40.0, 9.5, 8.0]);
        assert_eq!(f.annotations[0].area, 76.0);
    }
}
