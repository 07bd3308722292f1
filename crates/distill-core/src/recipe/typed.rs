//! Plugin tables (`teacher.model`, `data.options`, …) parsed into a plugin's own serde types, with errors
//! located in the recipe file like every other recipe key's (`file:line:column`).

use std::marker::PhantomData;

use serde::{
    de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
    Deserializer,
};

use super::{toml_error, Recipe};
use crate::{Error, Result};

/// The recipe's text, kept for locating errors in tables parsed later.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeSource {
    /// The file (for messages).
    pub path: String,
    /// Its text.
    pub text: String,
}

/// Deserializes the value at `path` (table keys) of a document as `T`; `None` when the path is absent.
struct At<'p, T> {
    path: &'p [&'p str],
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for At<'_, T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Option<T>, D::Error> {
        if self.path.is_empty() {
            return T::deserialize(d).map(Some);
        }
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for At<'_, T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a table holding `{}`", self.path.join("."))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<T>, A::Error> {
        let mut out = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == self.path[0] {
                out = map.next_value_seed(At::<T> {
                    path: &self.path[1..],
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

impl Recipe {
    /// Parses `table`, the recipe's value at `key` (dotted, e.g. `"teacher.model"` or `"data.options"`), as a
    /// plugin's own type `T` (declare it `#[serde(deny_unknown_fields)]` so a typo is an error). An error
    /// names the recipe file with the line and column of the offending key where the recipe's text has it,
    /// else the key.
    pub fn typed<T: DeserializeOwned>(&self, key: &str, table: &toml::Table) -> Result<T> {
        let err = match table.clone().try_into::<T>() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let msg = err.message().trim().replace('\n', " ");
        let Some(src) = self.source.as_ref() else {
            return Err(Error::config(format!("`{key}`"), msg));
        };
        let path: Vec<&str> = key.split('.').collect();
        let seed = At::<T> {
            path: &path,
            _t: PhantomData,
        };
        match seed.deserialize(toml::Deserializer::new(&src.text)) {
            // the same mistake in the file itself: located there
            Err(e) if e.span().is_some() => Err(toml_error(&src.text, &src.path, &e)),
            // the table came from [quick] or another override merged over the file
            _ => Err(Error::config(format!("{} `{key}`", src.path), msg)),
        }
    }
}

impl Recipe {
    /// `[data.options]` as the plugin's own type: `T::default()` when the recipe has none, else
    /// [`Recipe::typed`].
    pub fn options<T: DeserializeOwned + Default>(&self) -> Result<T> {
        match &self.data.options {
            None => Ok(T::default()),
            Some(t) => self.typed("data.options", t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        arch: String,
        #[serde(default)]
        hidden: Vec<usize>,
    }

    const TEXT: &str = "name = \"t\"\nplugin = \"p\"\ndataset = \"d\"\n[teacher]\nmodel = { arch = \"mlp\", hidden = [4] }\nepochs = 1\noptimizer = { kind = \"sgd\", lr = 0.1 }\n[student]\nepochs = 1\noptimizer = { kind = \"sgd\", lr = 0.1 }\n[student.model]\narch = \"mlp\"\nhiden = [2]\n[distill]\nlosses = [{ name = \"ce\", weight = 1.0 }]\n[quick.teacher.model]\nwidth = 3\n";

    #[test]
    fn a_typo_in_a_plugin_table_names_file_line_and_column() {
        let r = Recipe::parse(TEXT, "r.toml", false).unwrap();
        let ok: Spec = r.typed("teacher.model", &r.teacher.model).unwrap();
        assert_eq!(
            ok,
            Spec {
                arch: "mlp".into(),
                hidden: vec![4]
            }
        );
        let e = r
            .typed::<Spec>("student.model", &r.student.model)
            .unwrap_err()
            .to_string();
        // `hiden` is on line 13 of TEXT, column 1
        assert!(e.starts_with("r.toml:13:1:"), "{e}");
        assert!(e.contains("unknown field `hiden`"), "{e}");
        // a key that only the [quick] override brings in: named by file and key
        let q = Recipe::parse(TEXT, "r.toml", true);
        if let Ok(q) = q {
            let e = q
                .typed::<Spec>("teacher.model", &q.teacher.model)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("r.toml `teacher.model`:") && e.contains("width"),
                "{e}"
            );
        }
    }
}
